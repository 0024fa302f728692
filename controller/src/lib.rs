//! The Substruct controller.

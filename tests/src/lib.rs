//! System-test helpers (see tests/tests/*.rs).

//! The Substruct prospector: gathers a machine's hardware facts and reports them.

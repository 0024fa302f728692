//! Contract stub (owned by the live-image engineer): PID 1 inside the live image.

/// True when this process is the init of the live image.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Runs the whole live-image boot as PID 1; never returns.
pub fn run_as_init() -> ! {
    loop {
        std::thread::park();
    }
}

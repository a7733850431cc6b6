//! `--check-config`: validate the flags, say so, and exit; and the same
//! refusal when a process starts with a bad configuration.

/// Reports whether the flags make a valid configuration and exits (0
/// valid, 2 invalid, as for a flag clap refuses).
pub fn check_config<C, E: std::fmt::Display>(binary: &str, config: Result<C, E>) -> ! {
    match config {
        Ok(_) => {
            println!("{binary}: configuration is valid");
            std::process::exit(0)
        }
        Err(error) => refuse(binary, &error),
    }
}

/// The configuration, or the process exits as `--check-config` would (2,
/// saying why).
pub fn config_or_exit<C, E: std::fmt::Display>(binary: &str, config: Result<C, E>) -> C {
    config.unwrap_or_else(|error| refuse(binary, &error))
}

fn refuse(binary: &str, error: &dyn std::fmt::Display) -> ! {
    eprintln!("{binary}: invalid configuration: {error}");
    std::process::exit(2)
}

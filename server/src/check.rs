//! `--check-config`: validate the flags, say so, and exit.

/// Reports whether the flags make a valid configuration and exits (0
/// valid, 2 invalid, as for a flag clap refuses).
pub fn check_config<C, E: std::fmt::Display>(binary: &str, config: Result<C, E>) -> ! {
    match config {
        Ok(_) => {
            println!("{binary}: configuration is valid");
            std::process::exit(0)
        }
        Err(error) => {
            eprintln!("{binary}: invalid configuration: {error}");
            std::process::exit(2)
        }
    }
}

use std::process::ExitCode;

use clap::Parser as _;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if !matches!(args.command, cli::Command::Agent(_)) {
        // A CLI whose output is piped into `head` should stop quietly.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    cli::init_tracing(args.verbose, args.quiet, args.log_format);
    let json = args.json;
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            let code = cli::exit_code(&e);
            if json {
                println!("{}", cli::error_json(&e, code));
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

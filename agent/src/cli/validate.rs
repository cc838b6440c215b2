use std::path::Path;
use std::process::ExitCode;

use hostwall::policy;

pub fn run(file: &Path) -> anyhow::Result<ExitCode> {
    match policy::load_file(file) {
        Ok(p) => {
            let rules: usize = p.groups.values().map(|g| g.ingress.len() + g.egress.len()).sum();
            println!(
                "{}: valid ({} groups, {} rules, {} endpoints, {} prefix lists)",
                file.display(),
                p.groups.len(),
                rules,
                p.endpoints.len(),
                p.prefix_lists.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::new(e));
            Ok(ExitCode::from(super::exit::INVALID))
        }
    }
}

//! `surpd [DIR] [--config FILE] [--size 256MiB] [--max-value 1MiB] [--policy P] ...`: the
//! daemon in the foreground. Settings: flags beat SURPDB_* variables, which beat the config
//! file (see config.rs). Most users run it as `surpdb serve` from the pip-installed package.

use std::path::PathBuf;
use std::process::ExitCode;

use surpd::config::Config;

const USAGE: &str = "usage: surpd [DIR] [--config FILE] [--size SIZE] [--max-value SIZE] \
[--policy allkeys-lru|noeviction] [--max-clients N] [--queue-bytes SIZE] \
[--durability os|periodic] [--flush-interval-ms MS] [--group GROUP] [--log-level LEVEL]";

fn parse(args: &[String]) -> Result<Config, surpd::Error> {
    let mut it = args.iter();
    let mut file: Option<PathBuf> = None;
    let mut flags = Vec::new();
    while let Some(a) = it.next() {
        if a == "-h" || a == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if let Some(name) = a.strip_prefix("--") {
            let val = it
                .next()
                .cloned()
                .ok_or_else(|| surpd::Error::Config(format!("--{name} needs a value\n{USAGE}")))?;
            match name {
                "config" => file = Some(PathBuf::from(val)),
                "ready-fd" => flags.push(("ready_fd".to_string(), val)),
                _ => flags.push((name.replace('-', "_"), val)),
            }
        } else {
            flags.push(("dir".to_string(), a.clone()));
        }
    }
    let ready_fd = flags.iter().position(|(k, _)| k == "ready_fd").map(|i| flags.remove(i).1);
    let mut cfg = Config::load(file.as_deref(), &flags)?;
    if let Some(fd) = ready_fd {
        cfg.ready_fd = Some(fd.parse().map_err(|_| surpd::Error::Config("bad --ready-fd".into()))?);
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args).and_then(surpd::server::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("surpd: {e}");
            ExitCode::FAILURE
        }
    }
}

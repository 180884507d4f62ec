//! `surpd DIR [--size 256MiB] [--max-value 1MiB] [--policy allkeys-lru|noeviction]
//!       [--max-clients N] [--durability os|periodic]`: the daemon in the foreground.
//! Most users run it as `surpdb serve DIR` from the pip-installed package instead.

use std::process::ExitCode;

use surpd::config::{parse_durability, parse_policy, parse_size, Config};

fn parse(args: &[String]) -> Result<Config, surpd::Error> {
    let mut it = args.iter();
    let dir = it.next().ok_or_else(|| surpd::Error::Config("usage: surpd DIR [options]".into()))?;
    let mut cfg = Config::new(dir);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next().cloned().ok_or_else(|| surpd::Error::Config(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--size" => cfg.size = parse_size(&val()?)?,
            "--max-value" => cfg.max_value = parse_size(&val()?)?,
            "--policy" => cfg.policy = parse_policy(&val()?)?,
            "--max-clients" => {
                cfg.max_clients =
                    val()?.parse().map_err(|_| surpd::Error::Config("bad --max-clients".into()))?
            }
            "--durability" => cfg.durability = parse_durability(&val()?)?,
            _ => return Err(surpd::Error::Config(format!("unknown option {flag}"))),
        }
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

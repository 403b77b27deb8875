//! svcdns benchmarks, each one command, on loopback only, bounded in time, printing a
//! table: `registrations`, `scale`, `churn`, `dns`, `durable`, `etcd`, `soak`, `transfer`, `update`. Run through `bench/<name>` at the
//! repository root, which builds the release binaries first. `hold --size N` loads the
//! scale dataset of N instances into a server and keeps it until stdin closes, for
//! profiling by hand.

mod churn;
mod client;
mod dns;
mod durable;
mod etcd;
mod peers;
mod registrations;
mod scale;
mod server;
mod soak;
mod transfer;
mod update;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("registrations") => registrations::run(&args[1..]),
        Some("scale") => scale::run(&args[1..]),
        Some("churn") => churn::run(&args[1..]),
        Some("dns") => peers::run(&args[1..]),
        Some("durable") => durable::run(&args[1..]),
        Some("etcd") => etcd::run(&args[1..]),
        Some("soak") => soak::run(&args[1..]),
        Some("transfer") => transfer::run(&args[1..]),
        Some("update") => update::run(&args[1..]),
        Some("hold") => scale::hold(&args[1..]),
        _ => {
            eprintln!(
                "usage: svcdns-bench registrations|scale|churn|dns|durable|etcd|soak|transfer|update|hold [options]"
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The value at quantile `q` of sorted samples.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// A markdown table, printed as it is filled.
pub struct Table {
    columns: usize,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Table {
        println!("\n{title}\n");
        println!("| {} |", headers.join(" | "));
        println!("|{}", "---|".repeat(headers.len()));
        Table {
            columns: headers.len(),
        }
    }

    pub fn row(&self, cells: &[String]) {
        assert_eq!(cells.len(), self.columns, "row width");
        println!("| {} |", cells.join(" | "));
    }
}

/// A flag's value from `--name value`, or `default`.
pub fn option<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

//! Prints a volume's master key versions and the files whose data keys each
//! one wraps, without mounting (read-only: works beside a mount).
//!
//! ```sh
//! cargo run --example key_versions -- CIPHERDIR --passfile FILE
//! ```
//!
//! Output: one line per version (`v2 enabled primary, 3 files`), then its
//! files indented, one per line; files whose header does not open are listed
//! last under `unreadable`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sealfs::{UnlockSecret, Vault};

#[derive(Parser)]
#[command(about = "Print a sealfs volume's key versions and the files under each")]
struct Args {
    /// The volume's cipher directory.
    cipherdir: PathBuf,
    /// Read the passphrase from the first line of FILE.
    #[arg(long, value_name = "FILE", required_unless_present = "key_file")]
    passfile: Option<PathBuf>,
    /// Unlock with a 32-byte key file instead.
    #[arg(long, value_name = "FILE", conflicts_with = "passfile")]
    key_file: Option<PathBuf>,
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let secret = match (&a.passfile, &a.key_file) {
        (_, Some(k)) => UnlockSecret::from_key_file(k)?,
        (Some(p), None) => UnlockSecret::from_passfile(p)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let vault = Vault::open_read_only(&a.cipherdir, &secret)?;
    let mut files = vault.files_by_key_version()?;
    for v in vault.key_versions() {
        let under = files.remove(&Some(v.version)).unwrap_or_default();
        println!(
            "v{} {}{}, {} files",
            v.version,
            format!("{:?}", v.state).to_lowercase(),
            if v.primary { " primary" } else { "" },
            under.len()
        );
        for f in under {
            println!("  {}", f.display());
        }
    }
    // Versions named by headers but no longer in the keyring, and unreadable ones.
    for (v, under) in files {
        match v {
            Some(v) => println!("v{v} (not in the keyring), {} files", under.len()),
            None => println!("unreadable, {} files", under.len()),
        }
        for f in under {
            println!("  {}", f.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("key_versions: {e}");
            ExitCode::FAILURE
        }
    }
}

//! Decrypts one file of a volume to stdout, without mounting.
//!
//! ```sh
//! cargo run --example decrypt_file -- CIPHERDIR PATH --passfile FILE > plain
//! ```
//!
//! PATH is the file's plaintext path inside the volume (e.g. `notes/todo.txt`).
//! The volume is opened read-only, so this also works while it is mounted.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sealfs::{UnlockSecret, Vault};

#[derive(Parser)]
#[command(about = "Decrypt one file of a sealfs volume to stdout")]
struct Args {
    /// The volume's cipher directory.
    cipherdir: PathBuf,
    /// The file's plaintext path inside the volume.
    path: PathBuf,
    /// Read the passphrase from the first line of FILE.
    #[arg(long, value_name = "FILE", required_unless_present = "key_file")]
    passfile: Option<PathBuf>,
    /// Unlock with a 32-byte key file instead.
    #[arg(long, value_name = "FILE", conflicts_with = "passfile")]
    key_file: Option<PathBuf>,
}

fn run(a: &Args) -> Result<u64, Box<dyn std::error::Error>> {
    let secret = match (&a.passfile, &a.key_file) {
        (_, Some(k)) => UnlockSecret::from_key_file(k)?,
        (Some(p), None) => UnlockSecret::from_passfile(p)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let vault = Vault::open_read_only(&a.cipherdir, &secret)?;
    let mut file = vault.open_file(&a.path)?;
    let mut out = std::io::stdout().lock();
    let n = std::io::copy(&mut file, &mut out)?;
    out.flush()?;
    Ok(n)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("decrypt_file: {e}");
            ExitCode::FAILURE
        }
    }
}

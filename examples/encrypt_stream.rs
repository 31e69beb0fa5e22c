//! Encrypts stdin into a file of a volume, without mounting.
//!
//! ```sh
//! tar c photos | cargo run --example encrypt_stream -- CIPHERDIR backups/photos.tar --passfile FILE
//! ```
//!
//! The file is created (or replaced) at PATH, a plaintext path inside the
//! volume; `--parents` creates missing directories. The volume must not be
//! mounted: a writable open takes the volume's lock, as a mount does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sealfs::{UnlockSecret, Vault};

#[derive(Parser)]
#[command(about = "Encrypt stdin into a file of a sealfs volume")]
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
    /// Create missing parent directories.
    #[arg(long)]
    parents: bool,
}

fn run(a: &Args) -> Result<u64, Box<dyn std::error::Error>> {
    let secret = match (&a.passfile, &a.key_file) {
        (_, Some(k)) => UnlockSecret::from_key_file(k)?,
        (Some(p), None) => UnlockSecret::from_passfile(p)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let vault = Vault::open(&a.cipherdir, &secret)?;
    if a.parents {
        if let Some(parent) = a.path.parent() {
            vault.create_dir_all(parent)?;
        }
    }
    let mut file = vault.create(&a.path)?;
    let n = std::io::copy(&mut std::io::stdin().lock(), &mut file)?;
    file.finish()?;
    Ok(n)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(n) => {
            eprintln!(
                "encrypt_stream: {n} bytes written to {}",
                args.path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("encrypt_stream: {e}");
            ExitCode::FAILURE
        }
    }
}

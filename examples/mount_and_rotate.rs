//! Mounts a volume from a program, writes a file through the mount, rotates
//! the master key through the mount's control socket, writes a second file
//! (wrapped under the new version), reads both back and unmounts.
//!
//! ```sh
//! cargo run --example mount_and_rotate -- CIPHERDIR MOUNTPOINT --passfile FILE [--ctl-socket PATH]
//! ```
//!
//! Output: one line per step (`mounted …`, `wrote before-rotation.txt`,
//! `key version 2 is now primary`, …, `unmounted`). The volume must not be
//! mounted already; MOUNTPOINT must be an empty directory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sealfs::ctl::client::call;
use sealfs::ctl::protocol::{Op, Request, RotateResult, StatusResult};
use sealfs::daemon::Mount;
use sealfs::UnlockSecret;

#[derive(Parser)]
#[command(about = "Mount a sealfs volume, write, rotate the key, read back, unmount")]
struct Args {
    /// The volume's cipher directory.
    cipherdir: PathBuf,
    /// An empty directory to mount on.
    mountpoint: PathBuf,
    /// Read the passphrase from the first line of FILE.
    #[arg(long, value_name = "FILE", required_unless_present = "key_file")]
    passfile: Option<PathBuf>,
    /// Unlock with a 32-byte key file instead.
    #[arg(long, value_name = "FILE", conflicts_with = "passfile")]
    key_file: Option<PathBuf>,
    /// The control socket (default: the mount point's default socket).
    #[arg(long, value_name = "PATH")]
    ctl_socket: Option<PathBuf>,
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let secret = match (&a.passfile, &a.key_file) {
        (_, Some(k)) => UnlockSecret::from_key_file(k)?,
        (Some(p), None) => UnlockSecret::from_passfile(p)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let mut builder = Mount::builder(&a.cipherdir, &a.mountpoint).secret(secret);
    if let Some(s) = &a.ctl_socket {
        builder = builder.ctl_socket(s);
    }
    let mount = builder.mount()?;
    println!(
        "mounted {} on {}; control socket {}",
        mount.cipherdir().display(),
        mount.mountpoint().display(),
        mount.ctl_socket().display()
    );

    let before = a.mountpoint.join("before-rotation.txt");
    std::fs::write(&before, b"written under the first key version\n")?;
    println!("wrote before-rotation.txt");

    let socket = mount.ctl_socket().to_path_buf();
    let rotated: RotateResult = call(&socket, &Request::new(Op::Rotate))?;
    println!("key version {} is now primary", rotated.primary);

    let after = a.mountpoint.join("after-rotation.txt");
    std::fs::write(&after, b"written under the new key version\n")?;
    println!("wrote after-rotation.txt");

    for f in [&before, &after] {
        let text = std::fs::read_to_string(f)?;
        println!("read back {}: {}", f.display(), text.trim_end());
    }
    let status: StatusResult = call(&socket, &Request::new(Op::Status))?;
    println!(
        "primary key version {} of {}",
        status.primary,
        status.versions.len()
    );

    mount.unmount()?;
    println!("unmounted");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mount_and_rotate: {e}");
            ExitCode::FAILURE
        }
    }
}

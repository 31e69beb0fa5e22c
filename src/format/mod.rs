//! On-disk formats, as pure functions of bytes: the volume config, the sealed
//! keyring, file headers and directory records, chunk layout and sealing,
//! encrypted names, hard-link tables, extended attributes and POSIX ACLs. docs/FORMAT.md describes every byte.
//!
//! Must never: perform I/O. The volume layer reads and writes what these
//! functions produce.

pub mod acl;
pub mod audit;
pub mod chunk;
pub mod config;
pub mod grants;
pub mod group_state;
pub mod header;
pub mod host_id;
pub mod keyring;
pub mod layout;
pub mod lease;
pub mod links;
pub mod names;
pub mod reserved;
pub mod rootattrs;
pub mod xattrs;

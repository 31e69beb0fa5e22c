//! Moved: access control (the grant decision, the audit records, the
//! requester cache) lives in [`crate::policy`] now. These re-exports keep
//! the FUSE layer's imports working until it imports from there; nothing
//! new should use them.

pub use crate::policy::{
    op, read_comm, read_groups, read_proc, AccessControl as Policy, Caller, Event,
};

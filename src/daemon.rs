//! The mount daemon's composition root: wires the volume, its access
//! control, the FUSE frontend and the control plane together.
//!
//! Owns: the glue between layers that must not know each other (the FUSE
//! layer's cache control as the key service's [`MountHooks`]).
//! Must never: hold key policy (that is [`crate::kms`]), translate kernel
//! requests (that is [`crate::fs`]) or parse control requests (that is
//! [`crate::ctl`]).

use crate::fs::CacheControl;
use crate::kms::MountHooks;

impl MountHooks for CacheControl {
    fn drop_cached_file_data(&self) {
        self.invalidate_file_data();
    }
}

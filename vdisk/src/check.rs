//! `vdisk check`.

use std::path::Path;
use std::process::ExitCode;

use disklib::local::OpenOptions;

pub(crate) fn run(
    _disk: &Path,
    _opts: &OpenOptions,
    _json: bool,
) -> Result<ExitCode, crate::AnyError> {
    Err("check: not yet available".into())
}

//! `vdisk check`: exit 0 when consistent, 2 when corruption was found, 1
//! for usage or I/O errors.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;
use vmdk_file::check::check_disk;
use vmdk_file::local::OpenOptions;

pub(crate) fn run(
    disk: &Path,
    opts: &OpenOptions,
    as_json: bool,
    repair: bool,
) -> Result<ExitCode, crate::AnyError> {
    let mut changes = Vec::new();
    if repair {
        changes = vmdk_file::repair::repair(disk, opts)?;
        if !as_json {
            for c in &changes {
                println!("{}: repaired: {}", c.file.display(), c.what);
            }
        }
    }
    let report = check_disk(disk, opts)?;
    if as_json {
        let findings: Vec<_> = report
            .findings
            .iter()
            .map(|f| json!({"file": f.file.display().to_string(), "kind": format!("{:?}", f.finding.kind), "detail": f.finding.detail}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"consistent": report.is_consistent(), "findings": findings, "repairs": changes.iter().map(|c| json!({"file": c.file.display().to_string(), "change": c.what})).collect::<Vec<_>>()})
            )?
        );
    } else if report.is_consistent() {
        println!("{}: no errors found", disk.display());
    } else {
        for f in &report.findings {
            println!(
                "{}: {:?}: {}",
                f.file.display(),
                f.finding.kind,
                f.finding.detail
            );
        }
        println!(
            "{}: {} problem(s) found",
            disk.display(),
            report.findings.len()
        );
    }
    Ok(if report.is_consistent() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

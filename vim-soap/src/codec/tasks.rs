//! Tasks: `TaskInfo` and its states (and, with `server`, its writer).

#[cfg(feature = "server")]
use std::fmt::Write as _;

#[cfg(feature = "server")]
use crate::xml::escape;
use crate::xml::Element;
use crate::{Error, Result};

#[cfg(feature = "server")]
use super::envelope::tag;
use super::envelope::{req_moref, req_text, MoRef};
use super::faults::{Fault, FaultKind};

/// States of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting to run.
    Queued,
    /// Running.
    Running,
    /// Done.
    Success,
    /// Failed.
    Error,
}

impl TaskState {
    /// vSphere spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Success => "success",
            TaskState::Error => "error",
        }
    }
}

/// `TaskInfo`, the parts that matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task.
    pub task: MoRef,
    /// State.
    pub state: TaskState,
    /// A reference result (the snapshot of `CreateSnapshot_Task`).
    pub result: Option<MoRef>,
    /// The error of a failed task.
    pub error: Option<Fault>,
}

/// Reads a `TaskInfo` value element.
pub fn task_info(val: &Element) -> Result<TaskInfo> {
    let state = match req_text(val, "state")? {
        "queued" => TaskState::Queued,
        "running" => TaskState::Running,
        "success" => TaskState::Success,
        "error" => TaskState::Error,
        s => return Err(Error::Malformed(format!("unknown task state `{s}`"))),
    };
    let error = val.child("error").map(|e| {
        let message = e
            .child_text("localizedMessage")
            .unwrap_or_default()
            .to_string();
        let kind = match e.child("fault") {
            Some(f) => FaultKind::from_detail(f.xsi_type().unwrap_or("Unknown"), f),
            None => FaultKind::Other("Unknown".into()),
        };
        Fault { kind, message }
    });
    Ok(TaskInfo {
        task: req_moref(val, "task")?,
        state,
        result: val.child("result").and_then(MoRef::from_element),
        error,
    })
}

/// Serialises a `TaskInfo` (server side).
#[cfg(feature = "server")]
pub fn task_info_xml(t: &TaskInfo) -> String {
    let mut s = format!(
        "<val xsi:type=\"TaskInfo\">{}{}",
        t.task.xml("task"),
        tag("state", t.state.as_str())
    );
    if let Some(r) = &t.result {
        let _ = write!(
            s,
            "<result type=\"{}\" xsi:type=\"ManagedObjectReference\">{}</result>",
            escape(&r.kind),
            escape(&r.value)
        );
    }
    if let Some(f) = &t.error {
        let _ = write!(
            s,
            "<error>{}<fault xsi:type=\"{}\">{}</fault></error>",
            tag("localizedMessage", &f.message),
            escape(f.kind.type_name()),
            f.kind.detail_xml()
        );
    }
    s.push_str("</val>");
    s
}

//! Docker's log rotation, as the official PDS installer sets it: the json-file
//! driver with a size and a count limit in /etc/docker/daemon.json, since logs
//! that fill the disk are a common way for a PDS to die. The user's keys are
//! kept (the file is rewritten as formatted JSON, keys in order); a log driver
//! or limits the user chose are left as they are. Docker restarts only when the
//! file changed, through `host::config_file`, so a file Docker refuses is put
//! back and never leaves Docker down. The limits apply to containers created
//! afterwards, such as the PDS task.

use serde_json::{Map, Value};

use crate::error::Result;

use super::{Action, Ctx, StepId, StepPlan};
use crate::host::config_file;
use crate::host::facts as host_facts;
use crate::host::{FileMode, Script};

pub const ID: StepId = StepId::new("docker_logs", "docker log rotation");

pub const DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// The official installer's limits: four files of 500 MB at most per container.
const LIMITS: [(&str, &str); 2] = [("max-size", "500m"), ("max-file", "4")];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub daemon_json: Option<String>,
    /// A backup of daemon.json is left over: a run stopped between moving a new
    /// file into place and Docker running on it.
    pub install_interrupted: bool,
}

/// What daemon.json should be, or why pdsup leaves it alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merged {
    /// The file as it should be (the current text when nothing is missing).
    Text(String),
    /// The user logs with another driver: their choice, left as it is.
    OtherDriver(String),
}

/// The user's daemon.json with the json-file driver and the limits added where
/// missing. An empty or absent file counts as `{}`.
pub fn merge(current: Option<&str>) -> std::result::Result<Merged, String> {
    let mut root: Map<String, Value> = match current.map(str::trim) {
        None | Some("") => Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err("it is not a JSON object".into()),
            Err(e) => return Err(e.to_string()),
        },
    };
    match root.get("log-driver") {
        None => {
            root.insert("log-driver".into(), Value::from("json-file"));
        }
        Some(Value::String(d)) if d == "json-file" => {}
        Some(other) => {
            let name = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_string);
            return Ok(Merged::OtherDriver(name));
        }
    }
    let opts = root
        .entry("log-opts")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(opts) = opts else {
        return Err("its \"log-opts\" is not a JSON object".into());
    };
    for (key, value) in LIMITS {
        opts.entry(key).or_insert_with(|| Value::from(value));
    }
    let mut text = serde_json::to_string_pretty(&Value::Object(root))
        .map_err(|e| format!("cannot render it: {e}"))?;
    text.push('\n');
    Ok(Merged::Text(text))
}

/// Whether `current` already says what `merged` says (formatting aside).
fn same_json(current: Option<&str>, merged: &str) -> bool {
    let parse = |t: &str| serde_json::from_str::<Value>(t).ok();
    current
        .and_then(parse)
        .is_some_and(|c| Some(c) == parse(merged))
}

/// `dockerd --validate` (Docker 23 and later) checks the candidate; older
/// engines have no such check, and the file is JSON pdsup rendered itself.
fn validate_script(candidate: &str) -> Script {
    Script::of(
        "if dockerd --help 2>&1 | grep -q -- --validate; then dockerd --validate --config-file {}; fi",
        &[candidate],
    )
}

pub fn plan(facts: &Facts) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    let current = facts.daemon_json.as_deref();
    let text = match merge(current) {
        Ok(Merged::Text(text)) => text,
        Ok(Merged::OtherDriver(driver)) => {
            plan.notes.push(format!(
                "Docker logs with the {driver} driver ({DAEMON_JSON}): its rotation is left as you set it"
            ));
            return plan;
        }
        Err(why) => {
            plan.blockers.push(format!(
                "{DAEMON_JSON} cannot be read as Docker's configuration ({why}); fix it (Docker \
                 does not start with it either) or move it away, then run again"
            ));
            return plan;
        }
    };
    if same_json(current, &text) && !facts.install_interrupted {
        return plan;
    }
    let candidate = config_file::candidate_path(DAEMON_JSON);
    let install = config_file::Install {
        unit: "docker".into(),
        file: Some(config_file::NewFile {
            path: DAEMON_JSON.into(),
            contents: text.clone(),
            mode: FileMode::root(0o644),
            validate: Some(validate_script(&candidate)),
        }),
    };
    let detail = format!(
        "{}\n{}",
        crate::plan::diff(current.unwrap_or(""), &text),
        install.describe()
    );
    plan.change(
        format!(
            "rotate Docker's logs ({} per file, {} files) in {DAEMON_JSON} and restart Docker \
             (its running containers restart with it)",
            LIMITS[0].1, LIMITS[1].1
        ),
        Action::InstallConfig(install),
    )
    .detail(detail);
    plan
}

/// Docker's log rotation.
pub struct DockerLogsStep;

#[async_trait::async_trait(?Send)]
impl super::Step for DockerLogsStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn fresh(&self) -> Facts {
        Facts::default()
    }

    fn probes(&self, _settings: &crate::settings::Settings) -> Vec<crate::host::Cmd> {
        vec![
            host_facts::file_text(DAEMON_JSON).cmd,
            host_facts::exists(&config_file::backup_path(DAEMON_JSON)).cmd,
        ]
    }

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        Ok(Facts {
            daemon_json: ctx
                .read_checked(&host_facts::file_text(DAEMON_JSON))
                .await?,
            install_interrupted: ctx
                .read(&host_facts::exists(&config_file::backup_path(DAEMON_JSON)))
                .await?,
        })
    }

    fn plan(&self, facts: &Facts, _input: &super::PlanInput<'_>) -> Result<StepPlan> {
        Ok(plan(facts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_only_what_is_missing_and_keeps_the_users_keys() {
        let official = "{\n  \"log-driver\": \"json-file\",\n  \"log-opts\": {\n    \"max-file\": \"4\",\n    \"max-size\": \"500m\"\n  }\n}\n";
        type Row = (Option<&'static str>, Result<Merged, ()>);
        let table: [Row; 8] = [
            (None, Ok(Merged::Text(official.into()))),
            (Some(""), Ok(Merged::Text(official.into()))),
            (Some("{}"), Ok(Merged::Text(official.into()))),
            (
                Some(r#"{"storage-driver":"overlay2","log-opts":{"max-size":"10m","labels":"a"}}"#),
                Ok(Merged::Text(
                    "{\n  \"log-driver\": \"json-file\",\n  \"log-opts\": {\n    \"labels\": \"a\",\n    \"max-file\": \"4\",\n    \"max-size\": \"10m\"\n  },\n  \"storage-driver\": \"overlay2\"\n}\n".into(),
                )),
            ),
            (
                Some(r#"{"log-driver":"journald"}"#),
                Ok(Merged::OtherDriver("journald".into())),
            ),
            (Some("{not json"), Err(())),
            (Some("[]"), Err(())),
            (Some(r#"{"log-opts":"x"}"#), Err(())),
        ];
        for (current, want) in table {
            assert_eq!(merge(current).map_err(|_| ()), want, "{current:?}");
        }
    }

    #[test]
    fn docker_restarts_only_when_the_file_changes() {
        let fresh = plan(&Facts::default());
        assert_eq!(fresh.changes.len(), 1);
        let Action::InstallConfig(install) = &fresh.changes[0].action else {
            panic!("not an install")
        };
        assert_eq!(install.unit, "docker");
        let file = install.file.as_ref().unwrap();
        assert_eq!(file.path, DAEMON_JSON);
        assert!(file
            .validate
            .as_ref()
            .unwrap()
            .contains("/etc/docker/daemon.json.pdsup-new"));

        // Already rotated, in another layout: nothing to do.
        let done = Facts {
            daemon_json: Some(
                r#"{"log-opts":{"max-size":"500m","max-file":"4"},"log-driver":"json-file"}"#
                    .into(),
            ),
            install_interrupted: false,
        };
        assert!(plan(&done).is_unchanged());
        // The same file after a run stopped mid-install: installed again.
        let interrupted = Facts {
            install_interrupted: true,
            ..done
        };
        assert_eq!(plan(&interrupted).changes.len(), 1);

        let other = plan(&Facts {
            daemon_json: Some(r#"{"log-driver":"local"}"#.into()),
            install_interrupted: false,
        });
        assert!(other.is_unchanged() && other.notes[0].contains("local driver"));
        let broken = plan(&Facts {
            daemon_json: Some("{".into()),
            install_interrupted: false,
        });
        assert!(broken.is_unchanged());
        assert!(broken.blockers[0].contains("/etc/docker/daemon.json cannot be read"));
    }
}

//! The PDS image on the droplet's Docker, before the job that runs it: the pds
//! job starts the image's own entrypoint and command (read from the image, see
//! `nomad::job::pds_job_with_env_file`), so the image must be there to plan it.
//! Pulled from its registry, or loaded from `--pds-image-archive FILE`
//! (offline installs, private builds).

use crate::error::Result;

use super::{Action, Ctx, StepId, StepPlan};
use crate::host::facts::Fact;
use crate::host::{fill, FileMode, Output, Script};
use crate::nomad::job::ImageCommand;
use crate::settings::Settings;

pub const ID: StepId = StepId::new("pds_image", "pds image");

/// Where an archive waits to be loaded: the packages step uploads it there
/// alongside its apt transaction, this step loads it.
pub const IMAGE_STAGING: &str = "/var/tmp/pdsup-pds-image.tar";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The image's entrypoint and command; `None` when Docker has no such image.
    pub command: Option<ImageCommand>,
    /// The size of an archive staged for loading (asked only with
    /// `--pds-image-archive` and no image in Docker).
    pub staged_size: Option<u64>,
}

/// The PDS image in the droplet's Docker, and a copy of its archive waiting
/// to be loaded: what the packages step needs to decide on the upload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageFacts {
    pub present: bool,
    /// The size of the archive at the staging path, when there is one there.
    pub staged_size: Option<u64>,
}

impl ImageFacts {
    /// `present` and `staged <bytes>` lines, from [`super::facts::pds_image`].
    pub fn parse(text: &str) -> Self {
        ImageFacts {
            present: text.lines().any(|l| l.trim() == "present"),
            staged_size: text
                .lines()
                .find_map(|l| l.strip_prefix("staged "))
                .and_then(|n| n.trim().parse().ok()),
        }
    }
}

pub async fn gather_image(ctx: &Ctx<'_>) -> Result<ImageFacts> {
    super::facts::pds_image(&ctx.settings.pds_image, IMAGE_STAGING)
        .read(ctx.host)
        .await
}

/// The upload of `--pds-image-archive`, when the image is not in Docker and
/// the staging path does not hold that archive already. An upload is atomic
/// (written beside, then renamed), so a staged file is a whole copy; it is
/// taken for this archive when the sizes match (the load still checks that it
/// holds the image), and replaced otherwise.
pub fn archive_upload(settings: &Settings, image: &ImageFacts) -> Option<(String, Action)> {
    let archive = settings.pds_image_archive.as_ref()?;
    if image.present {
        return None;
    }
    let local_size = std::fs::metadata(archive).ok().map(|m| m.len());
    if local_size.is_some() && image.staged_size == local_size {
        return None;
    }
    Some((
        format!("upload the PDS image archive {}", archive.display()),
        Action::Upload {
            local: archive.clone(),
            path: IMAGE_STAGING.into(),
            mode: FileMode::root(0o600),
        },
    ))
}

/// One `docker image inspect` of `image` for both facts below, which a run
/// asks together: the config on the first line, the registry digests on the
/// second (Docker's CLI is the slowest probe of a converged run).
fn inspect(image: &str) -> Script {
    Script::of(
        "docker image inspect --format {} {} 2>/dev/null",
        &["{{json .Config}}{{println}}{{json .RepoDigests}}", image],
    )
}

/// Line `n` of a successful [`inspect`].
fn inspect_line(out: &Output, n: usize) -> Option<String> {
    if !out.success() {
        return None;
    }
    out.stdout_str().lines().nth(n).map(str::to_string)
}

/// The image's `Entrypoint` and `Cmd`, `None` when Docker does not have it.
pub fn image_command(image: &str) -> Fact<Option<ImageCommand>> {
    Fact::new(inspect(image), |out| {
        parse_image_command(&inspect_line(out, 0)?)
    })
}

/// The image's registry digest (`repo@sha256:…`), `None` for an image built
/// or loaded on the droplet (Docker knows no registry digest for those).
pub fn image_digest(image: &str) -> Fact<Option<String>> {
    Fact::new(inspect(image), |out| {
        parse_image_digest(&inspect_line(out, 1)?)
    })
}

/// `{{json .RepoDigests}}`: the first one (one per repository the image came from).
fn parse_image_digest(json: &str) -> Option<String> {
    let digests: Vec<String> = serde_json::from_str(json.trim()).ok()?;
    digests.into_iter().next()
}

/// `{{json .Config}}` of an image: `Entrypoint` and `Cmd` are lists or null.
fn parse_image_command(json: &str) -> Option<ImageCommand> {
    let config: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    let list = |key: &str| -> Option<Vec<String>> {
        match &config.get(key) {
            None | Some(serde_json::Value::Null) => Some(Vec::new()),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(_) => None,
        }
    };
    Some(ImageCommand {
        entrypoint: list("Entrypoint")?,
        cmd: list("Cmd")?,
    })
}

pub fn plan(facts: &Facts, settings: &Settings) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    if facts.command.is_some() {
        return plan;
    }
    let image = &settings.pds_image;
    match &settings.pds_image_archive {
        Some(archive) => {
            let staged = ImageFacts {
                present: false,
                staged_size: facts.staged_size,
            };
            if let Some((summary, upload)) = archive_upload(settings, &staged) {
                plan.change(summary, upload);
            }
            plan.change(
                format!("load it into Docker as {image}"),
                Action::Run(
                    load_script(IMAGE_STAGING, &archive.display().to_string(), image).cmd(),
                ),
            );
        }
        None => {
            plan.change(
                format!("pull the PDS image {image}"),
                Action::Run(pull_script(image).cmd()),
            );
        }
    }
    plan
}

/// Pulls the image; a failure says what to check.
fn pull_script(image: &str) -> Script {
    let failed = format!(
        "the image {image} could not be pulled on the droplet: check the image name (--pds-image), \
         the droplet's access to the registry, or load it with --pds-image-archive FILE"
    );
    Script::of(
        "docker pull --quiet {} >/dev/null || { echo {} >&2; exit 1; }",
        &[image, &failed],
    )
}

/// Loads the uploaded archive and removes it whatever happens: a tarball the
/// size of an image must not stay in /var/tmp after a failed load (the next
/// run uploads it again anyway). A failure names the local archive.
fn load_script(staged: &str, archive: &str, image: &str) -> Script {
    let load_failed = format!("docker could not load {archive}: is it a `docker save` tarball?");
    let missing = format!(
        "{archive} was loaded but holds no image {image}: check --pds-image (the name it was saved under)"
    );
    Script::new()
        // The trap's action is a command of its own: the path is quoted in it,
        // and the action quoted as one word.
        .line("trap {} EXIT", &[&fill("rm -f {}", &[staged])])
        .line(
            "docker load -i {} || { echo {} >&2; exit 1; }",
            &[staged, &load_failed],
        )
        .line(
            "docker image inspect {} >/dev/null 2>&1 || { echo {} >&2; exit 1; }",
            &[image, &missing],
        )
}

/// The PDS image, on the droplet.
pub struct PdsImageStep;

#[async_trait::async_trait(?Send)]
impl super::Step for PdsImageStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn fresh(&self) -> Facts {
        Facts::default()
    }

    fn probes(&self, settings: &Settings) -> Vec<crate::host::Cmd> {
        vec![image_command(&settings.pds_image).cmd]
    }

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        let command = ctx.read(&image_command(&ctx.settings.pds_image)).await?;
        let staged_size = match (&command, &ctx.settings.pds_image_archive) {
            (None, Some(_)) => gather_image(ctx).await?.staged_size,
            _ => None,
        };
        Ok(Facts {
            command,
            staged_size,
        })
    }

    fn plan(&self, facts: &Facts, input: &super::PlanInput<'_>) -> Result<StepPlan> {
        Ok(plan(facts, input.settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::facts::tests::output;

    #[test]
    fn one_inspect_answers_both_facts() {
        let image = "ghcr.io/bluesky-social/pds:0.4";
        assert_eq!(image_command(image).cmd, image_digest(image).cmd);
        assert!(image_command(image)
            .cmd
            .script
            .contains("{{json .Config}}{{println}}{{json .RepoDigests}}"));
    }

    #[test]
    fn the_digest_fact_takes_the_first_repo_digest() {
        let parse = image_digest("ghcr.io/bluesky-social/pds:0.4").parse;
        assert_eq!(
            parse(&output(
                Some(0),
                "{\"Cmd\":null}\n[\"ghcr.io/bluesky-social/pds@sha256:ab12\",\"other@sha256:cd\"]\n"
            )),
            Some("ghcr.io/bluesky-social/pds@sha256:ab12".into())
        );
        assert_eq!(parse(&output(Some(0), "{\"Cmd\":null}\n[]\n")), None);
        assert_eq!(parse(&output(Some(0), "{\"Cmd\":null}\n")), None);
        assert_eq!(parse(&output(Some(1), "")), None);
    }

    #[test]
    fn image_command_parses_inspect_output() {
        let parse = image_command("pds").parse;
        let official = r#"{"Env":["PATH=/usr/bin"],"Cmd":["node","--enable-source-maps","index.js"],"WorkingDir":"/app","Entrypoint":["dumb-init","--"]}"#;
        assert_eq!(
            parse(&output(Some(0), &format!("{official}\n[]\n"))),
            Some(ImageCommand {
                entrypoint: vec!["dumb-init".into(), "--".into()],
                cmd: vec![
                    "node".into(),
                    "--enable-source-maps".into(),
                    "index.js".into()
                ],
            })
        );
        let bare = "{\"Cmd\":null,\"Entrypoint\":null}\nnull\n";
        assert_eq!(parse(&output(Some(0), bare)), Some(ImageCommand::default()));
        assert_eq!(parse(&output(Some(1), "")), None);
        assert_eq!(parse(&output(Some(0), "garbled")), None);
        assert_eq!(parse(&output(Some(0), r#"{"Cmd":"node"}"#)), None);
    }

    #[test]
    fn present_image_needs_nothing_and_missing_one_is_pulled_or_loaded() {
        let mut settings = Settings::example();
        let present = Facts {
            command: Some(ImageCommand::default()),
            staged_size: None,
        };
        assert!(plan(&present, &settings).is_unchanged());
        let p = plan(&Facts::default(), &settings);
        assert_eq!(p.changes.len(), 1);
        assert!(p.changes[0].summary.starts_with("pull the PDS image"));
        settings.pds_image_archive = Some("/tmp/pds.tar".into());
        let p = plan(&Facts::default(), &settings);
        assert!(p.changes[0]
            .summary
            .starts_with("upload the PDS image archive"));
        assert!(p.changes[1].summary.starts_with("load it into Docker"));
        assert!(plan(&present, &settings).is_unchanged());
    }

    #[test]
    fn an_archive_staged_alongside_apt_is_loaded_not_uploaded_again() {
        let mut settings = Settings::example();
        // Any local file stands for the archive: only its size is compared.
        settings.pds_image_archive = Some("/etc/hostname".into());
        let size = std::fs::metadata("/etc/hostname").unwrap().len();
        let staged = Facts {
            command: None,
            staged_size: Some(size),
        };
        let p = plan(&staged, &settings);
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert!(p.changes[0].summary.starts_with("load it into Docker"));
        // A staged file of another size is some other archive: replaced.
        let other = Facts {
            command: None,
            staged_size: Some(size + 1),
        };
        let p = plan(&other, &settings);
        assert!(p.changes[0]
            .summary
            .starts_with("upload the PDS image archive"));
        assert_eq!(
            ImageFacts::parse("present\nstaged 1234\n"),
            ImageFacts {
                present: true,
                staged_size: Some(1234)
            }
        );
        assert_eq!(ImageFacts::parse(""), ImageFacts::default());
    }

    /// Runs the load script with a stand-in `docker` whose `load` succeeds or fails.
    fn run_load(load_ok: bool) -> (std::process::Output, tempfile::TempDir) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let bin = dir.join("bin");
        std::fs::create_dir(&bin).unwrap();
        let docker = bin.join("docker");
        let load = if load_ok {
            "exit 0"
        } else {
            "echo 'invalid tar header' >&2; exit 1"
        };
        std::fs::write(
            &docker,
            format!("#!/bin/sh\ncase \"$1\" in load) {load};; image) exit 0;; esac\nexit 2\n"),
        )
        .unwrap();
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let staged = dir.join("pdsup-pds-image.tar");
        std::fs::write(&staged, b"not a tarball").unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(load_script(
                staged.to_str().unwrap(),
                "/home/me/pds.tar",
                "example/pds:1",
            ))
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        (out, tmp)
    }

    #[test]
    fn the_staged_archive_is_removed_whatever_the_load_does() {
        let (out, dir) = run_load(false);
        let staged = dir.path().join("pdsup-pds-image.tar");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("docker could not load /home/me/pds.tar"),
            "{stderr}"
        );
        assert!(!staged.exists(), "a failed load left {}", staged.display());
        let (out, dir) = run_load(true);
        let staged = dir.path().join("pdsup-pds-image.tar");
        assert!(out.status.success(), "{out:?}");
        assert!(!staged.exists(), "a load left {}", staged.display());
    }
}

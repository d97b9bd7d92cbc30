//! reproducible/setup.sh and the project's scripts: the mirror is found on every Debian 12 apt
//! layout (throwaway apt directories, `--sources-only`), backports is written in the mirror's
//! layout or left alone when already enabled, every failure is one `error:` line with a
//! non-zero exit (no silent exit), and every script carries the ERR trap.

use dcr_tests::*;
use std::path::Path;
use std::process::{Command, Output};

const DEB822_MAIN: &str = "Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// Run `setup.sh --sources-only` against an apt directory holding `files` (path → content).
fn sources_only(tag: &str, files: &[(&str, &str)]) -> (Output, TempDir) {
    let t = TempDir::new(tag);
    let etc = t.path().join("apt");
    std::fs::create_dir_all(etc.join("sources.list.d")).unwrap();
    for (name, text) in files {
        std::fs::write(etc.join(name), text).unwrap();
    }
    let o = Command::new("bash")
        .arg(workspace().join("reproducible/setup.sh"))
        .arg("--sources-only")
        .env("DCR_APT_ETC", &etc)
        .output()
        .unwrap();
    (o, t)
}

fn written(t: &TempDir) -> Vec<(String, String)> {
    let d = t.path().join("apt/sources.list.d");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("dcr-"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn one_error_line(o: &Output, what: &str) -> String {
    assert!(!o.status.success(), "{what}: exit 0\n{}", stderr(o));
    let err = stderr(o);
    let lines: Vec<&str> = err.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line expected:\n{err}");
    assert!(lines[0].starts_with("error: "), "{what}: {err}");
    lines[0].to_string()
}

#[test]
fn deb822_only_layout_gets_deb822_backports_from_its_mirror() {
    let (o, t) = sources_only(
        "setup-deb822",
        &[("sources.list.d/debian.sources", DEB822_MAIN)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        written(&t),
        vec![(
            "dcr-bookworm-backports.sources".into(),
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n".into()
        )]
    );
}

#[test]
fn one_line_layout_gets_one_line_backports_from_its_mirror() {
    let list = "# comment\ndeb http://ftp.example.org/debian/ bookworm main contrib\n\
                deb-src http://src.example/debian bookworm main\n\
                deb http://security.debian.org/debian-security bookworm-security main\n";
    let (o, t) = sources_only("setup-oneline", &[("sources.list", list)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        written(&t),
        vec![(
            "dcr-bookworm-backports.list".into(),
            "deb http://ftp.example.org/debian/ bookworm-backports main\n".into()
        )]
    );
    // Options in brackets (signed-by kept).
    let list = "deb [ arch=amd64 signed-by=/k.gpg ] https://m.example/debian bookworm main\n";
    let (o, t) = sources_only("setup-oneline-opts", &[("sources.list", list)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        written(&t)[0].1,
        "deb [signed-by=/k.gpg] https://m.example/debian bookworm-backports main\n"
    );
}

#[test]
fn both_layouts_use_the_first_bookworm_mirror() {
    let list = "deb http://security.debian.org/debian-security bookworm-security main\n";
    let (o, t) = sources_only(
        "setup-both",
        &[
            ("sources.list", list),
            ("sources.list.d/debian.sources", DEB822_MAIN),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let w = written(&t);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].1.contains("URIs: http://mirror.example/debian\n"),
        "{w:?}"
    );
}

#[test]
fn backports_already_enabled_in_either_form_is_left_alone() {
    let deb822 = DEB822_MAIN.replace(
        "Suites: bookworm bookworm-updates\n",
        "Suites: bookworm bookworm-updates bookworm-backports\n",
    );
    let (o, t) = sources_only(
        "setup-bpo-822",
        &[("sources.list.d/debian.sources", &deb822)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(written(&t).is_empty());
    assert!(stderr(&o).contains("already enabled"), "{}", stderr(&o));

    let list = "deb http://deb.debian.org/debian bookworm main\n";
    let bpo = "deb http://deb.debian.org/debian bookworm-backports main\n";
    let (o, t) = sources_only(
        "setup-bpo-list",
        &[
            ("sources.list", list),
            ("sources.list.d/backports.list", bpo),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(written(&t).is_empty());
    assert!(stderr(&o).contains("backports.list"), "{}", stderr(&o));
}

#[test]
fn no_mirror_is_one_error_line_naming_what_to_add() {
    let disabled = DEB822_MAIN.replace("Components: main\n", "Components: main\nEnabled: no\n");
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("empty", vec![]),
        ("empty sources.list", vec![("sources.list", "")]),
        (
            "security only",
            vec![(
                "sources.list",
                "deb http://security.debian.org/debian-security bookworm-security main\n",
            )],
        ),
        (
            "cdrom and file only",
            vec![(
                "sources.list",
                "deb cdrom:[Debian 12]/ bookworm main\ndeb file:/srv/debian bookworm main\n",
            )],
        ),
        (
            "disabled stanzas",
            vec![("sources.list.d/debian.sources", &disabled)],
        ),
        (
            "commented out",
            vec![(
                "sources.list",
                "# deb http://deb.debian.org/debian bookworm main\n",
            )],
        ),
        (
            "ignored extension",
            vec![("sources.list.d/debian.sources.disabled", DEB822_MAIN)],
        ),
    ];
    for (what, files) in cases {
        let (o, t) = sources_only("setup-none", &files);
        let line = one_error_line(&o, what);
        assert_eq!(o.status.code(), Some(2), "{what}");
        assert!(line.contains("no Debian bookworm mirror"), "{what}: {line}");
        assert!(
            line.contains("bookworm-backports"),
            "{what}: says what to add: {line}"
        );
        assert!(written(&t).is_empty(), "{what}");
    }
    // No apt directory at all.
    let o = Command::new("bash")
        .arg(workspace().join("reproducible/setup.sh"))
        .arg("--sources-only")
        .env("DCR_APT_ETC", "/nonexistent/apt")
        .output()
        .unwrap();
    let line = one_error_line(&o, "no apt dir");
    assert!(line.contains("/nonexistent/apt"), "{line}");
}

#[test]
fn a_package_apt_cannot_install_is_one_error_line() {
    // The real apt (setup has run before the tests): every package is there but this one.
    if !require_tools(
        "a_package_apt_cannot_install_is_one_error_line",
        &["apt-get", "dpkg-query"],
    ) {
        return;
    }
    let o = Command::new("bash")
        .arg(workspace().join("reproducible/setup.sh"))
        .env("DCR_SETUP_EXTRA_PACKAGES", "dcr-no-such-package")
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    let last = err.trim().lines().last().unwrap_or("");
    assert_eq!(
        last,
        "error: setup.sh: apt-get install failed for: dcr-no-such-package (apt's messages above)",
        "{err}"
    );
    assert!(
        err.contains("dcr-no-such-package"),
        "apt's reason shown: {err}"
    );
}

#[test]
fn a_failing_command_in_a_script_is_one_line_naming_file_and_line() {
    let t = TempDir::new("errtrap");
    let script = t.path().join("s.sh");
    std::fs::write(
        &script,
        format!(
            "set -euo pipefail\n. {}\nx=$(echo a | grep -q b || echo c)\necho before\nfalse_cmd_missing_here --flag\necho after\n",
            workspace().join("reproducible/lib.sh").display()
        ),
    )
    .unwrap();
    let o = Command::new("bash").arg(&script).output().unwrap();
    assert_eq!(o.status.code(), Some(127));
    assert_eq!(stdout(&o), "before\n");
    let err = stderr(&o);
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "error: {}:5: `false_cmd_missing_here --flag` failed (exit 127);",
            script.display()
        )),
        "{err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        2,
        "bash's own message, then ours: {err}"
    );

    // A failure inside $( … ) is reported once, at the line of the assignment.
    std::fs::write(
        &script,
        format!(
            "set -euo pipefail\n. {}\ny=$(cat /nonexistent/x | tr a b)\necho after\n",
            workspace().join("reproducible/lib.sh").display()
        ),
    )
    .unwrap();
    let o = Command::new("bash").arg(&script).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    assert_eq!(err.matches("error: ").count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "error: {}:3: `y=$(cat /nonexistent/x | tr a b)` failed (exit 1)",
            script.display()
        )),
        "{err}"
    );
}

/// Every `*.sh` below `dir` (relative to the workspace), skipping build outputs; no git
/// needed (a copied checkout has no .git).
fn shell_scripts(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if !["target", "out", ".git", "node_modules"].contains(&name.as_str()) {
                shell_scripts(&p, out);
            }
        } else if name.ends_with(".sh") {
            let rel = p
                .strip_prefix(workspace())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push(rel);
        }
    }
}

#[test]
fn every_project_script_has_the_err_trap() {
    let mut files = vec![".ci/run".to_string()];
    shell_scripts(&workspace(), &mut files);
    assert!(files.len() >= 8, "{files:?}");
    for f in files {
        if f == "reproducible/lib.sh"
            || f == "reproducible/apt-sources.sh"
            || f == "reproducible/room.sh"
        {
            continue; // sourced, not run
        }
        let text = std::fs::read_to_string(workspace().join(&f)).unwrap();
        assert!(
            text.contains("set -euo pipefail") && text.contains("reproducible/lib.sh\""),
            "{f}: no `set -euo pipefail` + `. …/reproducible/lib.sh`"
        );
        assert!(Path::new(&workspace().join(&f)).exists());
    }
}

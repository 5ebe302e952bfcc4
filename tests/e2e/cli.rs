//! The command line explains itself: what `serve` needs, what `outbox` does, how to call
//! `requeue`. Runs the real binary; needs no database.

use std::process::Output;

fn handler(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn serve_help_names_the_required_settings() {
    for flag in ["--help", "-h"] {
        let out = handler(&["serve", flag]);

        assert!(out.status.success(), "{}", text(&out.stderr));
        let help = text(&out.stdout);
        for setting in [
            "MONGODB_URI",
            "EVENTGRID_TOPIC_ENDPOINT",
            "STANDALONE_FUNCTION_KEY",
        ] {
            assert!(
                help.contains(setting),
                "serve {flag} names {setting}:\n{help}"
            );
        }
    }
}

#[test]
fn requeue_without_arguments_says_how_to_requeue_every_dead_letter() {
    let out = handler(&["outbox", "requeue"]);

    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(error.contains("--all-dead"), "{error}");
    assert!(error.contains("--id"), "{error}");
}

#[test]
fn outbox_help_says_that_it_also_changes_entries() {
    let out = handler(&["outbox", "--help"]);

    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    let about = help.lines().next().unwrap_or_default();
    assert!(
        about.contains("requeue") && about.contains("skip"),
        "the first line says it changes entries (requeue, skip), not only inspects:\n{help}"
    );
}

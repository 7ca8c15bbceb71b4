//! `lightningdot bench`'s bad input: one `error:` line, no panic, before any work. (The command
//! itself runs in CI: `.ci/run` calls `bench --quick --device cpu`.)

mod common;

use std::process::Command;

use common::assert_clean_error;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn unknown_precision_is_one_line() {
    assert_clean_error(&bench(&["--precision", "fp8"]), "unknown precision");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_one_line() {
    assert_clean_error(&bench(&["--quick", "--device", "cuda"]), "no CUDA support");
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_device_that_does_not_exist_is_one_line() {
    assert_clean_error(
        &bench(&["--quick", "--device", "cuda:999"]),
        "not available",
    );
}

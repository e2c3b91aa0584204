//! Generates the C header from src/ffi with cbindgen. The result goes to OUT_DIR (the tests
//! compare it with the committed include/rewardkit.h, so drift fails CI); with
//! REWARDKIT_WRITE_HEADER=1 it also overwrites include/rewardkit.h.

use std::path::PathBuf;

/// Programs linked against target/<profile>/librewardkit.so look for its soname at run time:
/// provide it there (and in deps/, where `cargo test` leaves the library) as a link, so that
/// `-Ltarget/release -lrewardkit -Wl,-rpath,...` works without an install step.
fn soname_links(soname: &str) {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // OUT_DIR = target/<profile>/build/rewardkit-<hash>/out
    let Some(profile) = out.ancestors().nth(3) else { return };
    for dir in [profile.to_path_buf(), profile.join("deps")] {
        let link = dir.join(soname);
        if std::fs::symlink_metadata(&link).is_err() && dir.is_dir() {
            #[cfg(unix)]
            let _ = std::os::unix::fs::symlink("librewardkit.so", &link);
        }
    }
}

/// The part of the version that names the ABI: the major version from 1.0 on; before 1.0 every
/// minor version may break the ABI, so "0.MINOR".
fn abi_version() -> String {
    let (major, minor) = (
        std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap(),
        std::env::var("CARGO_PKG_VERSION_MINOR").unwrap(),
    );
    if major == "0" {
        format!("0.{minor}")
    } else {
        major
    }
}

fn main() {
    // The shared library's soname carries the ABI version, so an incompatible rewardkit cannot
    // be picked up by a program linked against another.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let soname = format!("librewardkit.so.{}", abi_version());
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
        soname_links(&soname);
    }
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=REWARDKIT_WRITE_HEADER");

    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let v = |k: &str| std::env::var(k).unwrap();
    let (major, minor, patch) =
        (v("CARGO_PKG_VERSION_MAJOR"), v("CARGO_PKG_VERSION_MINOR"), v("CARGO_PKG_VERSION_PATCH"));
    let number = major.parse::<u32>().unwrap() * 10_000
        + minor.parse::<u32>().unwrap() * 100
        + patch.parse::<u32>().unwrap();
    config.after_includes = Some(format!(
        "\n/* The version this header belongs to; rk_version() and rk_version_number() give the library's. */\n\
         #define RK_VERSION_MAJOR {major}\n#define RK_VERSION_MINOR {minor}\n#define RK_VERSION_PATCH {patch}\n\
         #define RK_VERSION_STRING \"{major}.{minor}.{patch}\"\n#define RK_VERSION_NUMBER {number}\n\
         /* The ABI this header describes: the shared library's soname is librewardkit.so.RK_ABI_VERSION. */\n\
         #define RK_ABI_VERSION \"{abi}\"\n\n\
         /* A status that is ignored is a bug: compilers that can, warn about it. */\n\
         #if defined(__GNUC__) || defined(__clang__)\n#define RK_MUST_USE __attribute__((warn_unused_result))\n\
         #else\n#define RK_MUST_USE\n#endif\n",
        abi = abi_version()
    ));
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen could not generate the C header from src/ffi");
    bindings.write_to_file(out_dir.join("rewardkit.h"));
    if std::env::var_os("REWARDKIT_WRITE_HEADER").is_some_and(|v| v == "1") {
        bindings.write_to_file(crate_dir.join("include/rewardkit.h"));
    }
}

//! A real graph of real upstream projects with the Debian toolchain: zlib
//! and libpng from their release tarballs (served on loopback), and a
//! program that links both — three deep, with a fan-in. Root builds it over
//! a fresh bootstrap; an ordinary user builds it in a store of their own
//! from a mirror root made, bit for bit the same; changing the program
//! rebuilds only the program. zlib is built from a writable copy of its
//! source (its `configure` overwrites files the tarball ships), libpng in a
//! `workdir` view of it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{both, run};
use crate::fixtures::As;
use crate::http_server::{Behaviour, Server};
use crate::upstream::orig_tarball;

const APP_C: &str = r#"#include <png.h>
#include <zlib.h>
#include <stdio.h>

int main(int argc, char **argv) {
    printf("libpng %s zlib %s\n", png_get_libpng_ver(NULL), zlibVersion());
    if (argc < 2)
        return 0;
    FILE *f = fopen(argv[1], "wb");
    if (!f)
        return 1;
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop i = png_create_info_struct(p);
    if (setjmp(png_jmpbuf(p)))
        return 1;
    png_init_io(p, f);
    png_set_IHDR(p, i, 2, 2, 8, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(p, i);
    png_byte row[2] = {0, 255};
    png_write_row(p, row);
    png_write_row(p, row);
    png_write_end(p, NULL);
    png_destroy_write_struct(&p, &i);
    return fclose(f) != 0;
}
"#;

fn sha256(path: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&o.stdout)[..64].to_string()
}

const TOOLCHAIN: &str =
    "[toolchain]\ndebian = { suite = \"bookworm\", include = [\"gcc\", \"libc6-dev\", \"make\"] }\n";

/// The three specs, each in a directory of its own; returns the app's.
fn write_graph(dir: &Path, srv: &Server) -> PathBuf {
    let zlib = orig_tarball("zlib");
    let png = orig_tarball("libpng1.6");
    srv.route("/zlib.tar.bz2", Behaviour::File(fs::read(&zlib).unwrap()));
    srv.route("/libpng.tar.gz", Behaviour::File(fs::read(&png).unwrap()));
    let node = |name: &str, body: String| {
        let d = dir.join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("spec.toml"),
            format!("[package]\nname = \"{name}\"\nversion = \"1\"\n\n{TOOLCHAIN}\n{body}"),
        )
        .unwrap();
        d.join("spec.toml")
    };
    node(
        "zlib",
        format!(
            r#"[[source]]
name = "zlib"
urls = ["{}"]
sha256 = "{}"
unpack = true
strip_components = 1

[build]
script = """
cp -a /sources/zlib/. .
chmod -R u+w .
CFLAGS=-O2 ./configure --prefix=/ --static
make -j"$HERMIT_JOBS"
make install DESTDIR="$out"
"""
"#,
            srv.url("/zlib.tar.bz2"),
            sha256(&zlib)
        ),
    );
    node(
        "libpng",
        format!(
            r#"[[source]]
name = "png"
urls = ["{}"]
sha256 = "{}"
unpack = true
strip_components = 1

[inputs]
zlib = {{ spec = "../zlib/spec.toml" }}

[build]
workdir = "png"
script = """
./configure --prefix=/ --disable-shared CPPFLAGS=-I/inputs/zlib/include LDFLAGS=-L/inputs/zlib/lib
make -j"$HERMIT_JOBS"
make install DESTDIR="$out"
"""
"#,
            srv.url("/libpng.tar.gz"),
            sha256(&png)
        ),
    );
    fs::create_dir_all(dir.join("app")).unwrap();
    fs::write(dir.join("app/app.c"), APP_C).unwrap();
    node(
        "app",
        r#"[[source]]
name = "app"
path = "."
include = ["app.c"]

[inputs]
png = { spec = "../libpng/spec.toml" }
zlib = { spec = "../zlib/spec.toml" }

[build]
script = """
gcc -O2 -o app /sources/app/app.c -I/inputs/png/include -I/inputs/zlib/include -L/inputs/png/lib -L/inputs/zlib/lib -lpng16 -lz -lm
mkdir -p $out/bin
cp app $out/bin/app
./app $out/dot.png > $out/versions
"""
"#
        .to_string(),
    )
}

fn build(who: As, home: &Path, spec: &Path, extra: &[&str]) -> serde_json::Value {
    let o = run(who
        .hermit_in(home)
        .arg("build")
        .arg(spec)
        .args(["--json", "-j", "2"])
        .args(extra));
    assert!(o.status.success(), "{}", both(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(&o)))
}

fn node<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["graph"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

#[test]
fn zlib_libpng_and_a_program_build_as_a_graph() {
    crate::fixtures::ensure_subids();
    let srv = Server::start();
    let t = As::User.scratch();
    let app = write_graph(t.path(), &srv);

    // Root: bootstraps the toolchain once for the three specs.
    let a = build(As::Root, &t.path().join("a"), &app, &[]);
    let order: Vec<&str> = a["graph"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["zlib", "libpng", "app"]);
    let out = PathBuf::from(a["output"].as_str().unwrap());
    let versions = fs::read_to_string(out.join("versions")).unwrap();
    assert!(
        versions.starts_with("libpng 1.6.39 zlib 1.2.13"),
        "the program did not use the libraries from /inputs: {versions}"
    );
    let png = fs::read(out.join("dot.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // It runs on the host too (libpng and zlib are linked in).
    let o = run(&mut Command::new(out.join("bin/app")));
    assert_eq!(String::from_utf8_lossy(&o.stdout), versions);

    // An ordinary user, in a store of their own, from a mirror of the
    // graph root made: the same bytes.
    let mirror = t.path().join("mirror");
    let o = run(As::Root.hermit_in(&t.path().join("a")).args([
        "mirror",
        app.to_str().unwrap(),
        "--to",
        mirror.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", both(&o));
    As::User.give(t.path());
    let m = mirror.to_str().unwrap();
    let b = build(As::User, &t.path().join("b"), &app, &["--mirror", m]);
    for name in ["zlib", "libpng", "app"] {
        assert_eq!(
            node(&a, name)["output_digest"],
            node(&b, name)["output_digest"],
            "{name}"
        );
        assert_eq!(
            node(&a, name)["build_key"],
            node(&b, name)["build_key"],
            "{name}"
        );
        assert_eq!(node(&b, name)["cached"], false);
    }

    // Changing the program rebuilds the program only.
    let c = t.path().join("app/app.c");
    fs::write(&c, APP_C.replace("libpng %s", "png %s")).unwrap();
    let v = build(As::User, &t.path().join("b"), &app, &["--mirror", m]);
    assert_eq!(node(&v, "zlib")["cached"], true);
    assert_eq!(node(&v, "libpng")["cached"], true);
    assert_eq!(node(&v, "app")["cached"], false);
    let out = PathBuf::from(v["output"].as_str().unwrap());
    assert!(fs::read_to_string(out.join("versions"))
        .unwrap()
        .starts_with("png 1.6.39"));
}

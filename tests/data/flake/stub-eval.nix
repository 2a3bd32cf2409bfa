# Evaluates flake.nix against a stub nixpkgs, without network: the outputs
# must evaluate, and hand buildRustPackage the version from Cargo.toml, the
# commit for `hermit --version`, the lock file and the main program.
# (The real build needs nixpkgs; CI here cannot fetch it.)
{ root }:
# root: the checkout, as a string
let
  flake = import (root + "/flake.nix");
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  pkgs = {
    rustPlatform.buildRustPackage = a: a;
    mkShell = a: a;
    stdenv = { buildPlatform.canExecute = _: true; hostPlatform = { }; };
    lib = {
      optionalString = c: s: if c then s else "";
      licenses.asl20 = "asl20";
      platforms.linux = [ ];
    };
  } // genAttrs [
    "pkg-config" "installShellFiles" "xz" "cargo" "rustc" "clippy" "rustfmt" "openssl" "curl"
    "gnutar" "zstd" "bzip2" "git" "bubblewrap" "busybox" "skopeo" "docker-distribution"
    "mmdebstrap" "diffoscope" "hyperfine"
  ] (n: n);
  nixpkgs = {
    lib.genAttrs = genAttrs;
    legacyPackages = genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs);
  };
  self = { rev = "0123456789abcdef0123456789abcdef01234567"; outPath = root; };
  out = flake.outputs { inherit self nixpkgs; };
  p = out.packages.x86_64-linux.default;
in
{
  inherit (p) pname version HERMIT_COMMIT doCheck;
  lock = toString p.cargoLock.lockFile == toString root + "/Cargo.lock";
  main = p.meta.mainProgram;
  installs = p.postInstall;
  shells = builtins.attrNames out.devShells;
}

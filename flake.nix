{
  description = "hermit: hermetic, reproducible sandbox builds with a record to rebuild from";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in {
      packages = forAll (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "hermit";
          version = "0.1.0";
          src = ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # The end-to-end tests need user namespaces, which the Nix build sandbox does not give.
          doCheck = false;
        };
      });
      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo rustc clippy rustfmt pkg-config openssl curl gnutar xz zstd bzip2
            bubblewrap busybox skopeo docker-distribution mmdebstrap diffoscope hyperfine
          ];
        };
      });
    };
}

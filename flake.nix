{
  description = "hermit: hermetic, reproducible sandbox builds with a record to rebuild from";

  # NixOS 25.05 ships Rust 1.86: Cargo reads `resolver = "3"` and
  # `rust-version = "1.85"` (24.11's 1.82 did not). Not exercised by CI,
  # which has no network to fetch nixpkgs; `nix flake lock` on a machine
  # with network writes flake.lock, the exact revision, to commit.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);
    in {
      packages = forAll (pkgs: rec {
        hermit = pkgs.rustPlatform.buildRustPackage {
          pname = "hermit";
          version = cargoToml.workspace.package.version;
          src = self;
          cargoLock.lockFile = ./Cargo.lock;
          # builder/build.rs stamps `hermit --version` and every record with
          # this (the source has no .git here).
          HERMIT_COMMIT = self.rev or self.dirtyShortRev or "";
          nativeBuildInputs = [ pkgs.pkg-config pkgs.installShellFiles ];
          buildInputs = [ pkgs.xz ];
          # The end-to-end tests need user namespaces, which the Nix build sandbox does not give.
          doCheck = false;
          postInstall = pkgs.lib.optionalString (pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform) ''
            $out/bin/hermit manpages man
            installManPage man/*.1
            installShellCompletion --cmd hermit \
              --bash <($out/bin/hermit completions bash) \
              --zsh <($out/bin/hermit completions zsh) \
              --fish <($out/bin/hermit completions fish)
          '';
          meta = {
            description = "Hermetic, reproducible sandbox builds with a record to rebuild from";
            license = pkgs.lib.licenses.asl20;
            platforms = pkgs.lib.platforms.linux;
            mainProgram = "hermit";
          };
        };
        default = hermit;
      });
      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo rustc clippy rustfmt pkg-config openssl curl gnutar xz zstd bzip2 git
            bubblewrap busybox skopeo docker-distribution mmdebstrap diffoscope hyperfine
          ];
        };
      });
    };
}

//! One module per subcommand. Each parses its own arguments (clap `Args`) and
//! calls into the libraries; none holds logic another command needs.

pub mod build;
pub mod bundle;
pub mod check;
pub mod doctor;
pub mod fetch;
pub mod generate;
pub mod image;
pub mod output;
pub mod provenance;
pub mod sandbox;
pub mod shell;
pub mod store;
pub mod toolchain;
pub mod worker;

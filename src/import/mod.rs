//! Adopting what a PBX already has: `import pjsip` reads an existing PJSIP
//! configuration ([`conf`] reads Asterisk's file format, [`pjsip`] turns
//! its endpoint + auth + aor sets into spec files).
//!
//! Architecture invariant: an import never writes a plain-text password
//! (a password becomes `md5Cred`), and never changes the configuration it
//! reads; what it cannot carry is listed with the reason and left alone.

pub mod conf;
pub mod csv;
pub mod pjsip;

//! Compiles the va_list shim and sets the shared library's soname and
//! symbol binding.

fn main() {
    println!("cargo:rerun-if-changed=src/shim.c");
    cc::Build::new()
        .file("src/shim.c")
        .flag_if_supported("-fvisibility=hidden")
        .compile("vixrs_shim");
    // The soname nbdkit and VDDK users look for, and -Bsymbolic so that
    // our exports calling each other never land in a same-named symbol of
    // the host program.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libvixDiskLib.so.8");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
}

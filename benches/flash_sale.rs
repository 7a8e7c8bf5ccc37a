//! Placeholder for the flash-sale benchmark. `cargo bench` passes `--bench`; it is
//! ignored.

fn main() {
    println!("flash_sale: no benchmark yet");
}

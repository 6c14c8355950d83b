//! Every real photo in `assets/` is recognised as its format, and every bad input is refused.

use std::path::Path;

use pixstore::core::formats::{sniff, Format};

fn asset(name: &str) -> Vec<u8> {
  std::fs::read(
    Path::new(env!("CARGO_MANIFEST_DIR"))
      .join("assets")
      .join(name),
  )
  .unwrap()
}

#[test]
fn photos_are_recognised() {
  for (name, format) in [
    ("antalya.jpg", Format::Jpeg),
    ("vilnius.jpg", Format::Jpeg),
    ("thumb-64.jpg", Format::Jpeg),
    ("vilnius-800.png", Format::Png),
    ("vilnius-800.webp", Format::Webp),
    ("vilnius-800.gif", Format::Gif),
    ("vilnius-800.avif", Format::Avif),
    ("vilnius-800.bmp", Format::Bmp),
    ("vilnius-800.tiff", Format::Tiff),
    ("1-pixel.png", Format::Png),
    ("1-pixel.webp", Format::Webp),
  ] {
    assert_eq!(sniff(&asset(name)), Some(format), "{name}");
  }
}

#[test]
fn bad_inputs_are_refused() {
  for name in [
    "empty.bin",
    "not-an-image.txt",
    "random-4k.bin",
    "truncated-jpeg.jpg",
    "gif-magic-only.gif",
    "script.svg",
  ] {
    assert_eq!(sniff(&asset(name)), None, "{name}");
  }
}

//! Image formats: which names a configuration may list, how content is recognised, and the
//! format byte that leads every encrypted file.
//!
//! Recognition is `imagesize`'s: it reads the signature and then the header as far as the
//! dimensions, so a bare signature or a cut-off header is not taken for an image.

use imagesize::{Compression, ImageType};
use memchr::memmem;

use super::error::{quote, Error, ErrorKind, Result};

/// An image format the store can recognise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
  Png,
  Jpeg,
  Webp,
  Gif,
  Avif,
  Heic,
  Heif,
  Bmp,
  Tiff,
  Ico,
  Jxl,
}

/// Every name a configuration may use, with the format it denotes: pixstore 3.x's names of
/// formats that can be recognised from their header, and JPEG XL. (3.x also listed names such as
/// svg, raw or xpm that its own sniffing never produced.)
const NAMES: &[(&str, Format)] = &[
  ("png", Format::Png),
  ("jpg", Format::Jpeg),
  ("jpeg", Format::Jpeg),
  ("jfif", Format::Jpeg),
  ("pjpeg", Format::Jpeg),
  ("pjp", Format::Jpeg),
  ("webp", Format::Webp),
  ("gif", Format::Gif),
  ("avif", Format::Avif),
  ("heic", Format::Heic),
  ("heif", Format::Heif),
  ("bmp", Format::Bmp),
  ("tif", Format::Tiff),
  ("tiff", Format::Tiff),
  ("ico", Format::Ico),
  ("jxl", Format::Jxl),
];

/// The allowed formats of a store, in configuration order, which fixes each format byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatList {
  names: Vec<String>,
}

impl FormatList {
  /// Checks a configured `imageFormats` list.
  pub fn new(names: Vec<String>) -> Result<Self> {
    let invalid = |why: String| Error::new(ErrorKind::InvalidConfig, why);

    if names.is_empty() {
      return Err(invalid(
        "Invalid imageFormats []: expected at least one format name".into(),
      ));
    }
    if names.len() > u8::MAX as usize {
      return Err(invalid(format!(
        "Invalid imageFormats: {} names, at most 255 fit the format byte",
        names.len()
      )));
    }
    for (i, name) in names.iter().enumerate() {
      if format_named(name).is_none() {
        let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
        return Err(invalid(format!(
          "Invalid imageFormats[{i}] {}: expected one of {}",
          quote(name),
          known.join(", ")
        )));
      }
      if names[..i].contains(name) {
        return Err(invalid(format!(
          "Invalid imageFormats[{i}] {}: listed twice",
          quote(name)
        )));
      }
    }
    Ok(FormatList { names })
  }

  pub fn names(&self) -> &[String] {
    &self.names
  }

  /// Recognises `image` and gives its format byte: one more than the index of the first listed
  /// name that denotes its format, as pixstore 3.x browsers expect.
  pub fn format_byte(&self, image: &[u8]) -> Result<u8> {
    let format =
      sniff(image).ok_or_else(|| invalid_image("not a complete image of any recognised format"))?;
    self
      .names
      .iter()
      .position(|name| format_named(name) == Some(format))
      .map(|index| index as u8 + 1)
      .ok_or_else(|| {
        invalid_image(&format!(
          "{format:?} is not among the allowed formats {:?}",
          self.names
        ))
      })
  }
}

impl Default for FormatList {
  fn default() -> Self {
    let names = ["png", "webp", "jpg", "jpeg"];
    FormatList {
      names: names.iter().map(|n| n.to_string()).collect(),
    }
  }
}

/// The message is pixstore 3.x's, which callers match on; the reason goes to the detail.
fn invalid_image(reason: &str) -> Error {
  Error::new(ErrorKind::InvalidImage, "Invalid image file").with_detail(reason)
}

fn format_named(name: &str) -> Option<Format> {
  NAMES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Recognises the format of `image`, or `None` when it is not a complete-headed image.
pub fn sniff(image: &[u8]) -> Option<Format> {
  let format = match imagesize::image_type(image).ok()? {
    ImageType::Png => Format::Png,
    ImageType::Jpeg => Format::Jpeg,
    ImageType::Webp => Format::Webp,
    ImageType::Gif => Format::Gif,
    ImageType::Heif(Compression::Av1) => Format::Avif,
    ImageType::Heif(Compression::Hevc) => Format::Heic,
    ImageType::Heif(_) => Format::Heif,
    ImageType::Bmp => Format::Bmp,
    ImageType::Tiff => Format::Tiff,
    ImageType::Ico => Format::Ico,
    ImageType::Jxl => Format::Jxl,
    _ => return None,
  };

  let size = imagesize::blob_size(image).ok()?;
  (size.width > 0 && size.height > 0 && has_end(format, image)).then_some(format)
}

/// Whether a JPEG or PNG reaches its end marker, so that an upload cut off after its header is
/// refused. Other formats have no marker worth checking without decoding.
fn has_end(format: Format, image: &[u8]) -> bool {
  match format {
    Format::Jpeg => jpeg_reaches_end(image),
    // The IEND chunk: zero length, then its type. Data after it is allowed, as decoders do.
    Format::Png => memmem::rfind(image, b"\0\0\0\0IEND").is_some(),
    _ => true,
  }
}

/// Walks the JPEG's segments by their lengths to the first start-of-scan of the main image (so
/// an Exif thumbnail's markers do not count), then looks for the end-of-image marker. Entropy-
/// coded data stuffs every 0xFF, so the first 0xFF 0xD9 after it is the real end.
fn jpeg_reaches_end(image: &[u8]) -> bool {
  let mut at = 2;
  while at + 4 <= image.len() {
    if image[at] != 0xff {
      return false;
    }
    match image[at + 1] {
      0xff => at += 1,
      // Searched from the back, where the marker of a whole file stands.
      0xda => return memmem::rfind(&image[at..], &[0xff, 0xd9]).is_some(),
      0x01 | 0xd0..=0xd7 => at += 2,
      _ => at += 2 + u16::from_be_bytes([image[at + 2], image[at + 3]]) as usize,
    }
  }
  false
}

#[cfg(test)]
mod tests {
  use super::*;

  fn list(names: &[&str]) -> FormatList {
    FormatList::new(names.iter().map(|n| n.to_string()).collect()).unwrap()
  }

  // The header of a 1x1 PNG with its end chunk, and a GIF header of 1x1.
  const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\0IEND\xaeB`\x82";
  const GIF: &[u8] = b"GIF89a\x01\0\x01\0\0\0\0;";

  #[test]
  fn format_byte_is_one_plus_the_first_matching_name() {
    assert_eq!(FormatList::default().format_byte(PNG), Ok(1));
    assert_eq!(list(&["gif", "png"]).format_byte(PNG), Ok(2));
    assert_eq!(list(&["gif", "png"]).format_byte(GIF), Ok(1));
  }

  #[test]
  fn a_format_not_listed_is_an_invalid_image() {
    let err = FormatList::default().format_byte(GIF).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidImage);
    assert_eq!(err.message(), "Invalid image file");
    assert!(err.detail().unwrap().contains("Gif"));
  }

  #[test]
  fn signatures_without_a_header_are_not_images() {
    for bad in [
      &b""[..],
      b"GIF89a",
      b"\xff\xd8\xff\xe0",
      b"hello!!",
      &PNG[..33],
    ] {
      assert_eq!(sniff(bad), None, "{bad:?}");
    }
  }

  #[test]
  fn a_cut_off_jpeg_with_a_complete_exif_thumbnail_is_refused() {
    // SOI, an APP1 segment holding a whole small JPEG, then a main image cut inside its scan.
    let thumbnail = b"\xff\xd8\xff\xda\x00\x02\x11\xff\xd9";
    let mut image = b"\xff\xd8\xff\xe1".to_vec();
    image.extend_from_slice(&((thumbnail.len() + 2) as u16).to_be_bytes());
    image.extend_from_slice(thumbnail);
    image.extend_from_slice(b"\xff\xda\x00\x02\x22\x33");
    assert!(!jpeg_reaches_end(&image));
    image.extend_from_slice(b"\xff\xd9");
    assert!(jpeg_reaches_end(&image));
  }

  #[test]
  fn unknown_and_repeated_names_are_refused() {
    for bad in [&["svg"][..], &["png", "png"], &[], &["PNG"]] {
      let names = bad.iter().map(|n| n.to_string()).collect();
      assert_eq!(
        FormatList::new(names).unwrap_err().kind(),
        ErrorKind::InvalidConfig
      );
    }
  }
}

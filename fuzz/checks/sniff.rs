//! Format sniffing on any bytes. `sniff` and `FormatList::format_byte` never panic; bytes taken
//! for an image start with that format's signature and, for PNG and JPEG, reach its end marker;
//! the format byte is one more than the index of the first listed name of the sniffed format,
//! and anything else is an `InvalidImage` error.

use std::sync::LazyLock;

use pixstore::core::formats::{sniff, Format, FormatList};
use pixstore::core::ErrorKind;

/// Every name a configuration may list, with the format it denotes, as `formats.rs` documents.
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

/// The default list, every name in both orders, and each name alone: every format byte a
/// store can give, and the first-listed-name rule where one format has several names.
static LISTS: LazyLock<Vec<FormatList>> = LazyLock::new(|| {
  let all: Vec<String> = NAMES.iter().map(|(name, _)| name.to_string()).collect();
  let reversed = all.iter().rev().cloned().collect();
  let singles = all.iter().map(|name| vec![name.clone()]);

  let mut lists = vec![FormatList::default()];
  for names in [all.clone(), reversed].into_iter().chain(singles) {
    lists.push(FormatList::new(names.clone()).unwrap_or_else(|e| panic!("{names:?}: {e:?}")));
  }
  lists
});

pub fn check(image: &[u8]) {
  let format = sniff(image);

  if let Some(format) = format {
    // imagesize reads a 12-byte header before it looks at any signature.
    assert!(image.len() >= 12, "{format:?} from {} bytes", image.len());
    assert!(
      has_signature(format, image),
      "{format:?} without its signature: {:02x?}",
      &image[..12]
    );
    assert!(
      reaches_end_marker(format, image),
      "{format:?} without its end marker"
    );
  }

  for list in LISTS.iter() {
    check_format_byte(list, format, image);
  }
}

fn check_format_byte(list: &FormatList, format: Option<Format>, image: &[u8]) {
  let first_listed = format.and_then(|format| {
    list
      .names()
      .iter()
      .position(|name| format_named(name) == Some(format))
  });

  match (list.format_byte(image), first_listed) {
    (Ok(byte), Some(index)) => assert_eq!(
      usize::from(byte),
      index + 1,
      "{format:?} in {:?}",
      list.names()
    ),
    (Err(err), None) => {
      assert_eq!(err.kind(), ErrorKind::InvalidImage, "{err:?}");
      assert_eq!(err.message(), "Invalid image file");
    }
    (got, expected_index) => panic!(
      "format_byte gave {got:?} for {format:?} in {:?}, expected the index {expected_index:?} \
       plus one",
      list.names()
    ),
  }
}

fn format_named(name: &str) -> Option<Format> {
  NAMES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The signatures imagesize tells the formats by.
fn has_signature(format: Format, image: &[u8]) -> bool {
  match format {
    Format::Png => image.starts_with(b"\x89PNG"),
    Format::Jpeg => image.starts_with(b"\xff\xd8\xff"),
    Format::Gif => image.starts_with(b"GIF8"),
    Format::Webp => image.starts_with(b"RIFF") && image[8..12] == *b"WEBP",
    Format::Avif | Format::Heic | Format::Heif => image[4..8] == *b"ftyp",
    Format::Bmp => image.starts_with(b"BM"),
    Format::Tiff => [&b"II*\0"[..], b"II+\0", b"MM\0*", b"MM\0+"]
      .iter()
      .any(|signature| image.starts_with(signature)),
    Format::Ico => image.starts_with(b"\0\0\x01\0"),
    Format::Jxl => {
      image.starts_with(b"\xff\x0a") || image.starts_with(b"\0\0\0\x0cJXL \x0d\x0a\x87\x0a")
    }
  }
}

/// A PNG holds an empty IEND chunk; a JPEG has an end-of-image marker after a start of scan.
/// Other formats have no end marker that sniffing checks.
fn reaches_end_marker(format: Format, image: &[u8]) -> bool {
  let find = |needle: &[u8]| image.windows(needle.len()).position(|w| w == needle);
  match format {
    Format::Png => find(b"\0\0\0\0IEND").is_some(),
    Format::Jpeg => {
      find(b"\xff\xda").is_some_and(|scan| image[scan..].windows(2).any(|w| w == b"\xff\xd9"))
    }
    _ => true,
  }
}

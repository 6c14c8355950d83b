import type {
  BackendConfig,
  ImageMeta,
  ImageRecord as NativeImageRecord,
  VerifyProgress,
  VerifyReport,
} from '../index.js'

export type { VerifyProgress, VerifyReport }

/** Key, IV and tag that decrypt one image: standard base64 with padding. */
export type ImageDecryptionMeta = ImageMeta

/** An image as callers see it: id, token, decryption meta and a proof to fetch it with. */
export type ImageRecord = NativeImageRecord

/**
 * Fetches the wire payload of an image for the browser client, given its record. A custom
 * fetcher replaces the default HTTP request.
 */
export type ImageFetcher = (imageRecord: ImageRecord, context?: unknown) => Promise<Uint8Array>

/** How public functions report failures; see the README's table. */
export type ErrorHandlingMode = 'hybrid' | 'throw' | 'warn' | 'silent' | 'custom'

/** Called with every failure in `'custom'` mode. */
export type CustomErrorHandler = (err: unknown) => void

/** Format names a configuration may list. JPEG and TIFF have several. */
export type ImageFormat =
  | 'png'
  | 'jpg'
  | 'jpeg'
  | 'jfif'
  | 'pjpeg'
  | 'pjp'
  | 'webp'
  | 'gif'
  | 'avif'
  | 'heic'
  | 'heif'
  | 'bmp'
  | 'tif'
  | 'tiff'
  | 'ico'
  | 'jxl'

/** Backend configuration: every key optional, merged over the defaults. */
export type PixstoreBackendConfig = Omit<
  BackendConfig,
  'imageFormats' | 'errorHandlingMode' | 'masterKey'
> & {
  /**
   * 32 bytes, or their base64, that wrap every image key before it reaches SQLite; `null` for
   * none, whatever the environment says. Default: the `PIXSTORE_MASTER_KEY` environment
   * variable (base64), if set.
   */
  masterKey?: Buffer | Uint8Array | string | null
  /**
   * Allowed formats, recognised from content. The order fixes each format's byte in the
   * encrypted file: 1 + its index. Default `['png', 'webp', 'jpg', 'jpeg']`.
   */
  imageFormats?: readonly ImageFormat[]
  /** How failures are reported. Default `'hybrid'`. */
  errorHandlingMode?: ErrorHandlingMode
}

/** Every `PixstoreError.code`. */
export type PixstoreErrorCode =
  | 'NOT_INITIALIZED'
  | 'INVALID_CONFIG'
  | 'INVALID_ARGUMENT'
  | 'INVALID_ID'
  | 'INVALID_IMAGE'
  | 'NOT_FOUND'
  | 'FILE_NOT_READABLE'
  | 'INTEGRITY_ERROR'
  | 'STORAGE_ERROR'
  | 'STORAGE_FULL'
  | 'STORAGE_READ_ONLY'
  | 'DATABASE_ERROR'
  | 'DATABASE_BUSY'
  | 'DATABASE_CORRUPT'
  | 'INCOMPATIBLE_STORE'
  | 'ENDPOINT_UNAVAILABLE'
  | 'DEFAULT_ENDPOINT_RUNNING'
  | 'STORE_IN_USE'
  | 'MASTER_KEY_REQUIRED'
  | 'WRONG_MASTER_KEY'

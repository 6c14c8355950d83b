// Declarations of pixstore/frontend. Self-contained, so that a browser project type-checks
// without Node's types.

/** Key, IV and tag that decrypt one image: standard base64 with padding (32, 12, 16 bytes). */
export interface ImageDecryptionMeta {
  key: string
  iv: string
  tag: string
}

/** An image as the backend hands it out: id, token, decryption meta and a proof to fetch it. */
export interface ImageRecord {
  id: string
  token: number
  meta: ImageDecryptionMeta
  statelessProof: string
}

/**
 * Fetches the wire payload of an image, given its record; replaces the request to the default
 * endpoint. `context` is the second argument of `getImage`.
 */
export type ImageFetcher = (imageRecord: ImageRecord, context?: unknown) => Promise<Uint8Array>

/** How public functions report failures; see the README's table. */
export type ErrorHandlingMode = 'hybrid' | 'throw' | 'warn' | 'silent' | 'custom'

/** Called with every failure in `'custom'` mode. */
export type CustomErrorHandler = (err: unknown) => void

/** Format names: the backend's list. The order of `imageFormats` fixes each format byte. */
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

/** Frontend configuration: every key optional, merged over the defaults. */
export interface PixstoreFrontendConfig {
  /** The backend's `imageFormats`, in the same order. Default `['png', 'webp', 'jpg', 'jpeg']`. */
  imageFormats?: readonly ImageFormat[]
  /**
   * Where the default endpoint is: a host name (`images.example`, `127.0.0.1`, `::1`), used as
   * `http://<host>:<defaultEndpointConnectPort>`, or a full origin (`https://images.example`,
   * `http://images.example:8080`), used as it is. Default: the page's host name.
   */
  defaultEndpointConnectHost?: string
  /** Port for a connect host given as a host name. Default `3001`. */
  defaultEndpointConnectPort?: number
  /** The backend's `defaultEndpointRoute`. Default `'/pixstore-image'`. */
  defaultEndpointRoute?: string
  /** Default `'hybrid'`. */
  errorHandlingMode?: ErrorHandlingMode
  /** Cached images kept before cleanup runs. Default `1000`. */
  frontendImageCacheLimit?: number
  /** Least recently used images removed by one cleanup. Default `50`. */
  frontendCleanupBatch?: number
  /** IndexedDB database name. Default `'pixstore'`. */
  frontendDbName?: string
  /** IndexedDB database version. Default `1`. */
  frontendDbVersion?: number
  /** IndexedDB object store name. Default `'images'`. */
  imageStoreName?: string
}

/** Every `PixstoreError.code` of the browser module. */
export type PixstoreFrontendErrorCode =
  | 'INVALID_CONFIG'
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'MISSING_ID'
  | 'MISSING_PROOF'
  | 'INVALID_PROOF'
  | 'ENDPOINT_ERROR'
  | 'INTEGRITY_ERROR'
  | 'INVALID_IMAGE'
  | 'CRYPTO_UNAVAILABLE'
  | 'CACHE_ERROR'

/** A failure the error handling mode applies to; `code` says which. */
export declare class PixstoreError extends Error {
  constructor(message: string, options?: { code?: PixstoreFrontendErrorCode; cause?: unknown })
  readonly name: 'PixstoreError'
  code: PixstoreFrontendErrorCode | 'UNKNOWN'
}

/** Every code a `PixstoreError` of this module can carry. */
export declare const ERROR_CODES: readonly PixstoreFrontendErrorCode[]

/**
 * Configures the module; optional before the first call (the defaults apply). `customFetcher`
 * replaces the request to the default endpoint. A bad configuration throws at once, whatever
 * the error mode: a `TypeError`, or a `PixstoreError` with code `INVALID_CONFIG`.
 *
 * @example
 * initPixstoreFrontend({ defaultEndpointConnectHost: 'https://images.example' })
 */
export declare function initPixstoreFrontend(
  config?: PixstoreFrontendConfig,
  customFetcher?: ImageFetcher,
): void

/**
 * The image of a record as a `Blob` of its MIME type, from the cache when it holds the record's
 * token, otherwise from the endpoint (and then cached). Concurrent calls for one id share one
 * request. `null` when the error mode absorbs a failure.
 *
 * @example
 * img.src = URL.createObjectURL(await getImage(record))
 */
export declare function getImage(record: ImageRecord, context?: unknown): Promise<Blob | null>

/** Removes an id's cached image; `true` when there was one. */
export declare function deleteCachedImage(id: string): Promise<boolean | null>

/** Whether the cache holds an image for an id, under any token. */
export declare function cachedImageExists(id: string): Promise<boolean | null>

/** The most recent `PixstoreError` handled in `hybrid` mode, or `null`. */
export declare function getLastPixstoreError(): PixstoreError | null

/** Sets the function that receives every failure in `custom` mode. */
export declare function setCustomErrorHandler(handler: CustomErrorHandler): void

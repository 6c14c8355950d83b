import type { ImageRecord, PixstoreBackendConfig, VerifyReport, VerifyProgress } from '../types/index.js'

export { PixstoreError } from '../shared/index.js'

/**
 * Opens the store: merges `config` over the defaults, opens (or creates) the database and the
 * image root. Call it before anything else; calling it again reconfigures. Throws at once on a
 * bad configuration, whatever the error mode: a `TypeError` for a wrong type, a `PixstoreError`
 * otherwise: `INVALID_CONFIG`, `INCOMPATIBLE_STORE`, `DATABASE_CORRUPT`, `DATABASE_BUSY`,
 * `STORAGE_READ_ONLY`, `MASTER_KEY_REQUIRED` or `WRONG_MASTER_KEY` (a store wrapped by a master
 * key opened without it, or with another), `DATABASE_ERROR`, `STORAGE_ERROR`.
 *
 * @example
 * initPixstoreBackend({ imageRootDir: './data/images', databasePath: './data/pixstore.sqlite' })
 */
export declare function initPixstoreBackend(config?: PixstoreBackendConfig): void

/**
 * Waits for every call in progress, then closes the store. Later calls fail with
 * `NOT_INITIALIZED` until `initPixstoreBackend` runs again.
 *
 * @example
 * process.on('SIGTERM', async () => { await closePixstoreBackend(); process.exit(0) })
 */
export declare function closePixstoreBackend(): Promise<void>

/**
 * Encrypts and stores an image under a new id, `DIR:KEY` when `dir` is given. Resolves once the
 * image is durable. `null` when the error mode absorbs a failure (`INVALID_IMAGE`,
 * `INVALID_ARGUMENT` for a `dir` with nothing usable, ...).
 *
 * @example
 * const record = await saveImage(await fs.readFile('cat.png'), 'avatars')
 */
export declare function saveImage(
  buffer: Buffer | Uint8Array,
  dir?: string,
): Promise<ImageRecord | null>

/**
 * `saveImage` for the image in a file. `FILE_NOT_READABLE` when it cannot be read.
 *
 * @example
 * const record = await saveImageFromFile('./uploads/cat.jpg')
 */
export declare function saveImageFromFile(
  filePath: string,
  dir?: string,
): Promise<ImageRecord | null>

/**
 * Replaces the image of an existing id: new key, IV and file, and a larger token. `NOT_FOUND`
 * (message `Image not found: <id>`) when there is no such image.
 *
 * @example
 * const updated = await updateImage(record.id, newBytes)
 */
export declare function updateImage(
  id: string,
  buffer: Buffer | Uint8Array,
): Promise<ImageRecord | null>

/**
 * `updateImage` with the image in a file.
 *
 * @example
 * await updateImageFromFile(record.id, './uploads/cat-cropped.jpg')
 */
export declare function updateImageFromFile(
  id: string,
  filePath: string,
): Promise<ImageRecord | null>

/**
 * Removes an image: `true` when its record or file existed and is now gone, `false` when
 * neither existed.
 *
 * @example
 * await deleteImage(record.id)
 */
export declare function deleteImage(id: string): Promise<boolean | null>

/**
 * Whether an image with this id exists.
 *
 * @example
 * if (await imageExists(id)) ...
 */
export declare function imageExists(id: string): Promise<boolean | null>

/**
 * The original bytes of an image, decrypted; `null` when there is no such image.
 * `INTEGRITY_ERROR` when its file is missing or was changed.
 *
 * @example
 * const bytes = await readImage(record.id)
 */
export declare function readImage(id: string): Promise<Buffer | null>

/**
 * The record of an image, with a fresh proof; `null` when there is none. Synchronous.
 *
 * @example
 * res.json(getImageRecord(req.params.id))
 */
export declare function getImageRecord(id: string): ImageRecord | null

/**
 * The wire payload for one image request, for serving from your own HTTP route instead of the
 * default endpoint. Checks, in order: id present, proof present, proof valid, record exists,
 * token equal; the first byte of the result is the state. `clientToken` may be a number, a
 * numeric string, `NaN` or `undefined`; anything but a whole number counts as no token. Fails
 * with `DEFAULT_ENDPOINT_RUNNING` while the default endpoint runs.
 *
 * @example
 * app.get('/images/:id', async (req, res) => {
 *   const payload = await customEndpointHelper(
 *     req.params.id,
 *     Number(req.query.token),
 *     req.get('x-pixstore-proof'),
 *   )
 *   res.type('application/octet-stream').send(Buffer.from(payload))
 * })
 */
export declare function customEndpointHelper(
  id: string | undefined,
  clientToken: number | string | undefined,
  proof: string | undefined,
): Promise<Uint8Array | null>

/**
 * Stops the default endpoint: resolves once the listener is closed and the responses in flight
 * are sent. `closePixstoreBackend` stops it too.
 *
 * @example
 * await stopDefaultEndpoint()
 */
export declare function stopDefaultEndpoint(): Promise<void>

/**
 * Re-wraps every image key under a new master key (32 bytes, or their base64), or stores them
 * plain again with `null`, in batches while the store keeps serving. Resolves once every key is
 * under the new key: from then on open the store with it. A crash or close midway leaves every
 * image readable with either key; opening with the new key finishes the rotation. Records handed
 * to callers do not change.
 *
 * @example
 * const { rewrapped } = await rotateMasterKey(process.env.NEW_PIXSTORE_MASTER_KEY)
 */
export declare function rotateMasterKey(
  newKey: Buffer | Uint8Array | string | null,
): Promise<{ rewrapped: number } | null>

/**
 * Checks the open store: every record's file exists and decrypts, SQLite's quick check passes,
 * and no Pixstore-named file is left that no record names (an orphan). With `repair: true`,
 * orphans are removed, unless the database itself is damaged; those that cannot be removed are
 * listed in `notRemoved`. It starts once the start-up sweep is over. `onProgress` hears how many
 * records are checked. `healthy` says whether the store is sound afterwards.
 *
 * @example
 * const report = await verifyStore({ onProgress: ({ checked, total }) => console.log(checked, total) })
 * if (!report.healthy) console.error(report.missing, report.damaged, report.orphans)
 */
export declare function verifyStore(options?: {
  repair?: boolean
  onProgress?: (progress: VerifyProgress) => void
}): Promise<VerifyReport | null>

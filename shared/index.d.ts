import type { CustomErrorHandler, PixstoreErrorCode } from '../types/index.js'

/**
 * A failure of the store. `code` says which kind (see `ERROR_CODES`); `detail`, where present,
 * says exactly what went wrong when `message` keeps a fixed wording.
 */
export declare class PixstoreError extends Error {
  constructor(message: string, options?: { code?: PixstoreErrorCode; detail?: string })
  readonly name: 'PixstoreError'
  readonly code: PixstoreErrorCode | 'UNKNOWN'
  readonly detail?: string
}

/** Every code a `PixstoreError` can carry. */
export declare const ERROR_CODES: readonly PixstoreErrorCode[]

/**
 * The most recent `PixstoreError` handled in `'hybrid'` mode, or `null`. A later success does
 * not reset it.
 *
 * @example
 * if ((await saveImage(upload)) === null) console.log(getLastPixstoreError()?.code)
 */
export declare function getLastPixstoreError(): PixstoreError | null

/**
 * Sets the function that `'custom'` mode calls with every failure.
 *
 * @example
 * setCustomErrorHandler((err) => logger.error({ err }, 'pixstore failed'))
 */
export declare function setCustomErrorHandler(handler: CustomErrorHandler): void

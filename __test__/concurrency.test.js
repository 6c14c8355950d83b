'use strict'

// Many calls on the same store at once: updates of one id, saves of many, and updates, deletes
// and reads of one id racing each other.

const fs = require('node:fs')
const path = require('node:path')

const {
  initPixstoreBackend,
  closePixstoreBackend,
  saveImage,
  updateImage,
  deleteImage,
  readImage,
  getImageRecord,
} = require('pixstore/backend')
const { asset, freshStore, encryptedFiles } = require('./helpers.js')

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  return c >>> 0
})

function crc32(bytes) {
  let c = 0xffffffff
  for (const byte of bytes) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

/** `1-pixel.png` with a tEXt chunk carrying `n` before its end: a distinct, valid PNG. */
function distinctPng(n) {
  const png = asset('1-pixel.png')
  const iend = png.length - 12
  const body = Buffer.concat([Buffer.from('tEXt'), Buffer.from(`Comment\0image ${n}`)])
  const chunk = Buffer.alloc(body.length + 8)
  chunk.writeUInt32BE(body.length - 4, 0)
  body.copy(chunk, 4)
  chunk.writeUInt32BE(crc32(body), chunk.length - 4)
  return Buffer.concat([png.subarray(0, iend), chunk, png.subarray(iend)])
}

/** `thumb-64.jpg` with a comment segment carrying `n` after its start: a distinct, valid JPEG. */
function distinctJpeg(n) {
  const jpeg = asset('thumb-64.jpg')
  const text = Buffer.from(`image ${n}`)
  const segment = Buffer.alloc(4 + text.length)
  segment.writeUInt16BE(0xfffe, 0)
  segment.writeUInt16BE(text.length + 2, 2)
  text.copy(segment, 4)
  return Buffer.concat([jpeg.subarray(0, 2), segment, jpeg.subarray(2)])
}

const IMAGES = ['1-pixel.png', '1-pixel.webp', 'thumb-64.jpg', 'vilnius-800.webp'].map(asset)

let dir
let root

/** The encrypted files of one id. */
function filesOf(id) {
  const [dir, key] = id.includes(':') ? id.split(':') : [null, id]
  const prefix = dir === null ? `${key}.` : `${dir}${path.sep}${key}.`
  return encryptedFiles(root).filter((file) => file.startsWith(prefix))
}

const isOneOf = (bytes, candidates) => candidates.some((candidate) => candidate.equals(bytes))

beforeAll(() => {
  const store = freshStore()
  dir = store.dir
  root = store.config.imageRootDir
  initPixstoreBackend(store.config)
})

afterAll(async () => {
  await closePixstoreBackend()
  fs.rmSync(dir, { recursive: true, force: true })
})

test('50 concurrent updates of one id each get their own larger token; the last one wins', async () => {
  const saved = await saveImage(asset('vilnius-800.webp'))
  const inputs = Array.from({ length: 50 }, (_, i) => IMAGES[i % IMAGES.length])

  const records = await Promise.all(inputs.map((image) => updateImage(saved.id, image)))

  const tokens = records.map((record) => record.token)
  expect(records.every((record) => record.id === saved.id)).toBe(true)
  expect(new Set(tokens).size).toBe(50)
  expect(tokens.every((token) => token > saved.token)).toBe(true)

  const max = Math.max(...tokens)
  const winner = tokens.indexOf(max)
  const current = getImageRecord(saved.id)
  expect(current.token).toBe(max)
  expect(current.meta).toEqual(records[winner].meta)

  const bytes = await readImage(saved.id)
  expect(isOneOf(bytes, inputs)).toBe(true)
  expect(bytes.equals(inputs[winner])).toBe(true)

  expect(filesOf(saved.id)).toHaveLength(1)
})

test('100 concurrent saves of different images get distinct ids and read back exactly', async () => {
  const images = Array.from({ length: 100 }, (_, i) => (i % 2 ? distinctJpeg(i) : distinctPng(i)))
  expect(new Set(images.map((image) => image.toString('base64'))).size).toBe(100)
  const before = encryptedFiles(root).length

  const records = await Promise.all(
    images.map((image, i) => saveImage(image, i % 3 === 0 ? 'batch' : undefined)),
  )

  expect(new Set(records.map((record) => record.id)).size).toBe(100)
  const read = await Promise.all(records.map((record) => readImage(record.id)))
  read.forEach((bytes, i) => {
    expect({ i, same: bytes.equals(images[i]) }).toEqual({ i, same: true })
    expect(getImageRecord(records[i].id)).toEqual(expect.objectContaining({ id: records[i].id }))
  })
  expect(encryptedFiles(root).length - before).toBe(100)
})

test('updates, a delete and reads of one id racing each other fail only with NOT_FOUND', async () => {
  for (let round = 0; round < 10; round++) {
    const original = IMAGES[round % IMAGES.length]
    const saved = await saveImage(original)
    const valid = [original, ...IMAGES]

    // Half the calls start before the delete, which starts once the first update is through,
    // and half with it.
    const calls = []
    const race = (from, to) => {
      for (let i = from; i < to; i++) {
        calls.push(
          i % 2
            ? ['update', updateImage(saved.id, IMAGES[i % IMAGES.length])]
            : ['read', readImage(saved.id)],
        )
      }
    }
    race(0, 20)
    await Promise.allSettled([calls[1][1]])
    calls.push(['delete', deleteImage(saved.id)])
    race(20, 40)
    const settled = await Promise.allSettled(calls.map(([, call]) => call))

    const problems = []
    const tokens = []
    settled.forEach((outcome, i) => {
      const kind = calls[i][0]
      if (outcome.status === 'rejected') {
        const { code, message } = outcome.reason
        if (kind !== 'update' || code !== 'NOT_FOUND') {
          problems.push(`${kind} #${i} rejected: ${code} ${message}`)
        }
        return
      }
      const value = outcome.value
      if (kind === 'delete' && value !== true) problems.push(`delete resolved to ${value}`)
      if (kind === 'update') {
        if (value?.id !== saved.id) problems.push(`update #${i} resolved to ${value}`)
        else tokens.push(value.token)
      }
      if (kind === 'read' && value !== null && !isOneOf(value, valid)) {
        problems.push(`read #${i} returned ${value.length} bytes of no image written`)
      }
    })
    if (new Set(tokens).size !== tokens.length) problems.push(`repeated tokens ${tokens}`)

    expect({ round, problems }).toEqual({ round, problems: [] })
    expect(getImageRecord(saved.id)).toBeNull()
    expect(await readImage(saved.id)).toBeNull()
    expect(filesOf(saved.id)).toEqual([])
  }
})

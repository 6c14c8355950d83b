// A photo gallery on Pixstore: upload, list, replace and delete photos through pixstore/backend;
// the page shows them through pixstore/frontend, which fetches each photo encrypted and
// decrypts it in the browser.
//
//   npm run example                     http://127.0.0.1:3000/, data in examples/gallery/.data
//   PORT=0 GALLERY_DATA_DIR=/tmp/g npm run example     any free port, data elsewhere
//
// The app keeps its own list of photo ids (photos.json), as an app keeps ids in its database;
// Pixstore keeps the images. Images are served by an Express route through
// customEndpointHelper, on the same origin as the page.

import fs from 'node:fs/promises'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import express from 'express'
import {
  initPixstoreBackend,
  closePixstoreBackend,
  saveImage,
  updateImage,
  deleteImage,
  getImageRecord,
  customEndpointHelper,
  PixstoreError,
} from 'pixstore/backend'

const here = path.dirname(fileURLToPath(import.meta.url))
const dataDir = path.resolve(process.env.GALLERY_DATA_DIR ?? path.join(here, '.data'))
const host = process.env.HOST ?? '127.0.0.1'
const port = Number(process.env.PORT ?? 3000)
const listFile = path.join(dataDir, 'photos.json')

await fs.mkdir(dataDir, { recursive: true })
initPixstoreBackend({
  imageRootDir: path.join(dataDir, 'images'),
  databasePath: path.join(dataDir, 'pixstore.sqlite'),
  defaultEndpointEnabled: false,
  errorHandlingMode: 'throw',
})

// The photo list: [{ id, name, addedAt }]. Writes go one after another, each through a
// temporary file, so a crash leaves the old list or the new one.
let photos = JSON.parse(await fs.readFile(listFile, 'utf8').catch(() => '[]'))
let listWrite = Promise.resolve()
function saveList() {
  listWrite = listWrite.then(async () => {
    const temporary = `${listFile}.tmp`
    await fs.writeFile(temporary, JSON.stringify(photos, null, 2))
    await fs.rename(temporary, listFile)
  })
  return listWrite
}

/** The file name the page sends, percent-encoded since headers carry no arbitrary text. */
function fileName(req, fallback) {
  try {
    return decodeURIComponent(req.get('x-file-name') ?? fallback).slice(0, 200)
  } catch {
    return fallback
  }
}

/** What the page gets for a photo: its name and its record (id, token, meta, proof). */
function photoView(photo) {
  const record = getImageRecord(photo.id)
  return record && { id: photo.id, name: photo.name, addedAt: photo.addedAt, record }
}

const STATUS_BY_CODE = {
  INVALID_IMAGE: 400,
  INVALID_ID: 400,
  INVALID_ARGUMENT: 400,
  NOT_FOUND: 404,
}

/** Wraps an async route so that its failures become JSON answers. */
const route = (handler) => async (req, res) => {
  try {
    await handler(req, res)
  } catch (err) {
    const status = err instanceof PixstoreError ? (STATUS_BY_CODE[err.code] ?? 500) : 500
    if (status === 500) console.error(err)
    res.status(status).json({ error: err.message, code: err.code })
  }
}

const upload = express.raw({ type: () => true, limit: '25mb' })
const app = express()
app.disable('x-powered-by')

app.use(express.static(path.join(here, 'public')))

// The browser module, straight from the package, as a bundler would take it.
const frontendModule = createRequire(import.meta.url).resolve('pixstore/frontend')
app.get('/pixstore/frontend/index.mjs', (req, res) => {
  res.type('text/javascript').sendFile(frontendModule)
})

app.get(
  '/api/photos',
  route(async (req, res) => {
    res.json(photos.map(photoView).filter(Boolean))
  }),
)

app.post(
  '/api/photos',
  upload,
  route(async (req, res) => {
    const record = await saveImage(req.body, 'gallery')
    const photo = {
      id: record.id,
      name: fileName(req, 'photo'),
      addedAt: Date.now(),
    }
    photos.push(photo)
    await saveList()
    res.status(201).json({ ...photoView(photo), record })
  }),
)

app.put(
  '/api/photos/:id',
  upload,
  route(async (req, res) => {
    const photo = photos.find((p) => p.id === req.params.id)
    if (!photo) return res.status(404).json({ error: `No photo ${req.params.id}` })
    const record = await updateImage(photo.id, req.body)
    photo.name = fileName(req, photo.name)
    await saveList()
    res.json({ ...photoView(photo), record })
  }),
)

app.delete(
  '/api/photos/:id',
  route(async (req, res) => {
    const photo = photos.find((p) => p.id === req.params.id)
    if (!photo) return res.status(404).json({ error: `No photo ${req.params.id}` })
    await deleteImage(photo.id)
    photos = photos.filter((p) => p !== photo)
    await saveList()
    res.status(204).end()
  }),
)

// A fresh record, for a page whose proofs have expired (they last 20 to 40 seconds).
app.get(
  '/api/photos/:id/record',
  route(async (req, res) => {
    const record = photos.some((p) => p.id === req.params.id) && getImageRecord(req.params.id)
    if (!record) return res.status(404).json({ error: `No photo ${req.params.id}` })
    res.json(record)
  }),
)

// The wire payload, at the default endpoint's route, so the browser module's default fetcher
// finds it with defaultEndpointConnectHost set to the page's origin.
app.get(
  '/pixstore-image/:id',
  route(async (req, res) => {
    const payload = await customEndpointHelper(
      req.params.id,
      req.get('x-pixstore-token'),
      req.get('x-pixstore-proof'),
    )
    res.set('Cache-Control', 'no-store')
    res.type('application/octet-stream').send(Buffer.from(payload))
  }),
)

const server = app.listen(port, host, () => {
  const { address, port: bound } = server.address()
  const shown = address.includes(':') ? `[${address}]` : address
  console.log(`Pixstore gallery: http://${shown}:${bound}/`)
  console.log(`Data: ${dataDir}`)
})
server.on('error', (err) => {
  console.error(
    err.code === 'EADDRINUSE'
      ? `Port ${port} is in use: start with PORT=<another port> npm run example`
      : err,
  )
  process.exit(1)
})

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close()
    closePixstoreBackend().then(() => process.exit(0))
  })
}

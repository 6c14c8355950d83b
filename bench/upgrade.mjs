// Times the first start of this version on a pixstore 3.x store of 10,000 images (the upgrade),
// reading every image once after it, and going back to 3.x's layout (`pixstore downgrade`)
// after every image was rewritten by this version. Writes bench/results/upgrade.json.
//
//   npm run build && node bench/upgrade.mjs [--images 10000]

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const require = createRequire(import.meta.url)
const backend = require('../backend/index.js')
const native = require('../lib/native.js')
const { writeLegacyStore } = require('../scripts/legacy-store.js')

const { values } = parseArgs({ options: { images: { type: 'string', default: '10000' } } })
const count = Number(values.images)
const dir = mkdtempSync(join(tmpdir(), 'pixstore-bench-upgrade-'))
const results = { images: count, date: new Date().toISOString(), steps: {} }

async function step(name, work) {
  process.stdout.write(`${name.padEnd(52)} `)
  const start = performance.now()
  const detail = await work()
  const ms = performance.now() - start
  results.steps[name] = { ms: Math.round(ms), ...detail }
  console.log(`${ms.toFixed(0).padStart(7)} ms${detail ? `  ${JSON.stringify(detail)}` : ''}`)
}

let store
await step(`generate a 3.x store of ${count} images`, () => {
  store = writeLegacyStore(dir, count - 5)
  return { images: store.images.length }
})
const config = { ...store.config, defaultEndpointEnabled: false, errorHandlingMode: 'throw' }

await step('initPixstoreBackend (schema upgrade, synchronous)', () => {
  backend.initPixstoreBackend(config)
})
await step('start-up sweep of the image root (background)', () => backend.closePixstoreBackend())

backend.initPixstoreBackend(config)
await step('read and decrypt every image once', async () => {
  let bytes = 0
  for (let i = 0; i < store.images.length; i += 64) {
    const batch = store.images.slice(i, i + 64)
    const images = await Promise.all(batch.map(({ id }) => backend.readImage(id)))
    for (const image of images) bytes += image.length
    if (i % 2048 === 0) process.stdout.write('.')
  }
  return { megabytes: Math.round(bytes / 1e6) }
})
await step('rewrite every image with this version (updateImage)', async () => {
  const image = require('node:fs').readFileSync(
    fileURLToPath(new URL('../assets/1-pixel.png', import.meta.url)),
  )
  for (let i = 0; i < store.images.length; i += 64) {
    const batch = store.images.slice(i, i + 64)
    await Promise.all(batch.map(({ id }) => backend.updateImage(id, image)))
    if (i % 2048 === 0) process.stdout.write('.')
  }
})
await step('go back: pixstore downgrade (every file renamed)', async () => {
  const { settle } = require('../lib/errors.js')
  const report = settle(await native.downgradeToLegacyNames())
  return { renamed: report.renamed, failed: report.failed.length }
})
await backend.closePixstoreBackend()

rmSync(dir, { recursive: true, force: true })
const out = fileURLToPath(new URL('./results/', import.meta.url))
mkdirSync(out, { recursive: true })
writeFileSync(join(out, 'upgrade.json'), `${JSON.stringify(results, null, 2)}\n`)
console.log(`\nResults written to ${join(out, 'upgrade.json')}`)

// One library in one process: runs the workloads that bench/bench.mjs asks for and prints one
// JSON line per result on stdout. `--lib ours` is this package, `--lib v3` is pixstore 3.2.1
// installed in bench/node_modules (npm run bench installs it).
//
//   node bench/runner.mjs --lib ours|v3 --workload ops|storm|serve|stored --dir <empty dir>
//     ops:    --images a.png,b.jpg --concurrency 1,16 --seconds 0.5
//             save, update, getImageRecord, imageExists, readImage (ours), delete per cell
//     storm:  --images antalya.jpg --count 200   peak RSS and event-loop delay of one storm
//     serve:  --images a.png,b.jpg --port 4000   saves, prints the records, serves until stdin ends
//     stored: --levels 1000,10000 --seconds 1    save and read rates with N images stored

import { existsSync, readFileSync, readdirSync, writeFileSync, mkdirSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const { values: args } = parseArgs({
  options: {
    lib: { type: 'string' },
    workload: { type: 'string' },
    dir: { type: 'string' },
    images: { type: 'string', default: '1-pixel.png' },
    concurrency: { type: 'string', default: '1' },
    seconds: { type: 'string', default: '0.5' },
    count: { type: 'string', default: '200' },
    port: { type: 'string', default: '0' },
    levels: { type: 'string', default: '1000' },
  },
})

const ASSETS = fileURLToPath(new URL('../assets/', import.meta.url))
const BENCH = fileURLToPath(new URL('./', import.meta.url))
const seconds = Number(args.seconds)
const print = (message) => process.stdout.write(`${JSON.stringify(message)}\n`)
const list = (text) => text.split(',').filter(Boolean)

async function loadLibrary(lib) {
  if (lib === 'ours') return createRequire(import.meta.url)('../backend/index.js')
  if (lib === 'v3') {
    const entry = join(BENCH, 'node_modules', 'pixstore3', 'backend', 'index.js')
    if (!existsSync(entry)) throw new Error(`pixstore 3.2.1 is not installed in ${BENCH}`)
    return import(entry)
  }
  throw new Error(`--lib must be ours or v3, not ${lib}`)
}

const backend = await loadLibrary(args.lib)
const config = {
  imageRootDir: join(args.dir, 'images'),
  databasePath: join(args.dir, 'store.sqlite'),
  defaultEndpointEnabled: args.workload === 'serve',
  defaultEndpointListenHost: '127.0.0.1',
  defaultEndpointListenPort: Number(args.port) || 39999,
  errorHandlingMode: 'throw',
  statelessKeyWindowLength: 600000,
}
mkdirSync(args.dir, { recursive: true })
backend.initPixstoreBackend(config)

// `workers` concurrent loops, each awaiting `op` until the time is up; the calls in flight at
// the deadline finish and count.
async function closedLoop(workers, op, limitSeconds = seconds) {
  let ops = 0
  const start = performance.now()
  const end = start + limitSeconds * 1000
  await Promise.all(
    Array.from({ length: workers }, async (_, worker) => {
      for (let i = 0; i === 0 || performance.now() < end; i++) {
        await op(worker, i)
        ops++
      }
    }),
  )
  return rate(ops, start)
}

// `workers` concurrent loops sharing `items` until every one is done.
async function drain(workers, items, op) {
  let next = 0
  const start = performance.now()
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (next < items.length) await op(items[next++])
    }),
  )
  return rate(items.length, start)
}

function rate(ops, start) {
  const elapsed = (performance.now() - start) / 1000
  return { ops, seconds: Number(elapsed.toFixed(4)), rate: ops / elapsed }
}

const image = (name) => readFileSync(join(ASSETS, name))

async function ops() {
  const images = list(args.images)
  // Warm-up: the first calls pay for JIT, thread pools and the database's first pages.
  const warm = []
  await closedLoop(8, async () => warm.push((await backend.saveImage(image(images[0]))).id), 0.2)
  await drain(8, warm, (id) => backend.deleteImage(id))

  for (const name of images) {
    const buffer = image(name)
    for (const concurrency of list(args.concurrency).map(Number)) {
      const cell = (workload, result) =>
        print({ type: 'cell', workload, concurrency, image: name, bytes: buffer.length, ...result })
      const saved = []
      cell(
        'save',
        await closedLoop(concurrency, async () => saved.push((await backend.saveImage(buffer)).id)),
      )
      // Each worker updates its own id, so no two calls race on one record.
      cell(
        'update',
        await closedLoop(concurrency, (worker) =>
          backend.updateImage(saved[worker % saved.length], buffer),
        ),
      )
      const pick = (worker, i) => saved[(worker * 7919 + i) % saved.length]
      cell(
        'getImageRecord',
        await closedLoop(concurrency, async (worker, i) => {
          if (!backend.getImageRecord(pick(worker, i))) throw new Error('record missing')
        }),
      )
      cell(
        'imageExists',
        await closedLoop(concurrency, async (worker, i) => {
          if (!(await backend.imageExists(pick(worker, i)))) throw new Error('image missing')
        }),
      )
      if (typeof backend.readImage === 'function') {
        cell(
          'readImage',
          await closedLoop(concurrency, async (worker, i) => {
            const bytes = await backend.readImage(pick(worker, i))
            if (bytes.length !== buffer.length) throw new Error('readImage returned other bytes')
          }),
        )
      }
      cell(
        'delete',
        await drain(concurrency, saved, async (id) => {
          if ((await backend.deleteImage(id)) !== true) throw new Error('delete found nothing')
        }),
      )
    }
  }
}

const vmHwm = () => {
  const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))
  return match ? Number(match[1]) * 1024 : null
}

async function storm() {
  const buffer = image(list(args.images)[0])
  const count = Number(args.count)
  // One save first, so the storm does not pay for the first call's set-up.
  await backend.deleteImage((await backend.saveImage(buffer)).id)
  globalThis.gc?.()
  const baseline = process.memoryUsage().rss
  const hwmBefore = vmHwm()
  let peak = baseline
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss)
  }, 5)
  const delay = monitorEventLoopDelay({ resolution: 1 })
  delay.enable()
  const start = performance.now()
  const records = await Promise.all(Array.from({ length: count }, () => backend.saveImage(buffer)))
  const elapsed = (performance.now() - start) / 1000
  delay.disable()
  clearInterval(sampler)
  peak = Math.max(peak, process.memoryUsage().rss)
  if (records.some((record) => !record?.id)) throw new Error('a save of the storm failed')
  print({
    type: 'storm',
    count,
    bytes: buffer.length,
    seconds: Number(elapsed.toFixed(3)),
    rate: count / elapsed,
    rssBaseline: baseline,
    rssPeakSampled: peak,
    vmHwmBefore: hwmBefore,
    vmHwm: vmHwm(),
    loopDelayP99Ms: delay.percentile(99) / 1e6,
    loopDelayMaxMs: delay.max / 1e6,
    loopDelayMeanMs: delay.mean / 1e6,
  })
}

async function serve() {
  const records = {}
  for (const name of list(args.images)) records[name] = await backend.saveImage(image(name))
  print({ type: 'ready', port: config.defaultEndpointListenPort, records })
  // Served until the driver closes stdin.
  await new Promise((resolve) => {
    process.stdin.on('end', resolve)
    process.stdin.on('close', resolve)
    process.stdin.resume()
  })
  process.exit(0)
}

// Brings the store to `target` images. Ours: saveImage at concurrency 256 (the real path, with
// its fsyncs). 3.x: one real save, then its row and file copied under new ids through 3.x's own
// SQLite driver in one transaction (saving 100,000 through 3.x's API takes many minutes).
let stored = 0
async function fill(target, pixel) {
  const start = performance.now()
  if (args.lib === 'ours') {
    let next = stored
    await Promise.all(
      Array.from({ length: 256 }, async () => {
        while (next < target) {
          next++
          await backend.saveImage(pixel)
        }
      }),
    )
  } else {
    const template = await backend.saveImage(pixel)
    stored++
    const file = readdirSync(config.imageRootDir).find((entry) => entry.startsWith(template.id))
    const ciphertext = readFileSync(join(config.imageRootDir, file))
    const extension = file.slice(template.id.length)
    const requireV3 = createRequire(join(BENCH, 'node_modules', 'pixstore3', 'package.json'))
    const Database = requireV3('better-sqlite3')
    const db = new Database(config.databasePath)
    const insert = db.prepare('INSERT INTO image_records (id, token, meta) VALUES (?, ?, ?)')
    const meta = JSON.stringify(template.meta)
    db.transaction(() => {
      for (let i = stored; i < target; i++) {
        const id = `fill${i.toString(36).padStart(8, '0')}`
        insert.run(id, template.token, meta)
        writeFileSync(join(config.imageRootDir, `${id}${extension}`), ciphertext)
      }
    })()
    db.close()
  }
  stored = target
  return (performance.now() - start) / 1000
}

async function storedLevels() {
  const pixel = image('1-pixel.png')
  const ids = []
  for (const level of list(args.levels).map(Number)) {
    const fillSeconds = await fill(level, pixel)
    // Ids to read: taken from the newest saves (3.x's filled ids are synthetic but real rows).
    const probe = await Promise.all(Array.from({ length: 64 }, () => backend.saveImage(pixel)))
    ids.push(...probe.map((record) => record.id))
    const saved = []
    const save = await closedLoop(64, async () => saved.push((await backend.saveImage(pixel)).id))
    const read = await closedLoop(64, async (worker, i) => {
      if (!backend.getImageRecord(ids[(worker * 31 + i) % ids.length])) throw new Error('missing')
    })
    let readImage = null
    if (typeof backend.readImage === 'function') {
      readImage = await closedLoop(64, async (worker, i) => {
        await backend.readImage(ids[(worker * 31 + i) % ids.length])
      })
    }
    // The measured saves are removed again, so the next level starts where it says.
    await drain(64, saved, (id) => backend.deleteImage(id))
    print({ type: 'stored', level, fillSeconds, save, read, readImage, concurrency: 64 })
  }
}

const workloads = { ops, storm, serve, stored: storedLevels }
if (!workloads[args.workload]) throw new Error(`unknown --workload ${args.workload}`)
await workloads[args.workload]()
if (typeof backend.closePixstoreBackend === 'function') await backend.closePixstoreBackend()
print({ type: 'done' })
process.exit(0)

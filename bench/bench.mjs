// npm run bench: the same workloads on this package and on pixstore 3.2.1, side by side, with
// the machine's ceilings. Each library runs in its own child process (bench/runner.mjs); the
// default endpoint is loaded from this process with wrk (autocannon where wrk is missing).
// Prints one table, the extra measures and the targets, and writes bench/results/<date>.json.
//
//   npm run bench [-- --seconds 0.5] [-- --full]   --full adds the 100,000-stored level
//   npm run bench:upgrade                            the 3.x upgrade timing (bench/upgrade.mjs)

import { spawn, spawnSync } from 'node:child_process'
import { createCipheriv, randomBytes } from 'node:crypto'
import { closeSync, existsSync, fsyncSync, mkdirSync, mkdtempSync, openSync } from 'node:fs'
import { rmSync, writeFileSync, writeSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const autocannon = require('autocannon')

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '0.5' },
    full: { type: 'boolean', default: false },
    levels: { type: 'string' },
    'endpoint-seconds': { type: 'string', default: '2' },
  },
})

const BENCH = fileURLToPath(new URL('./', import.meta.url))
const ROOT = fileURLToPath(new URL('../', import.meta.url))
const IMAGES = ['1-pixel.png', 'vilnius-800.webp', 'vilnius.jpg', 'antalya.jpg']
const LABEL = {
  '1-pixel.png': '95 B PNG',
  'vilnius-800.webp': '98 KB WebP',
  'vilnius.jpg': '540 KB JPEG',
  'antalya.jpg': '1.3 MB JPEG',
}
const CONCURRENCY = [1, 16, 64, 256]
const WORKLOADS = ['save', 'update', 'delete', 'getImageRecord', 'readImage', 'imageExists']
const LEVELS = (args.levels ?? (args.full ? '1000,10000,100000' : '1000,10000'))
  .split(',')
  .map(Number)
const log = (line) => console.log(line)
const dir = mkdtempSync(join(tmpdir(), 'pixstore-bench-'))
const results = {
  date: new Date().toISOString(),
  machine: { cpus: cpus().length, cpu: cpus()[0]?.model, node: process.version },
  options: { seconds: Number(args.seconds), levels: LEVELS },
}

// ---------------------------------------------------------------- the 3.2.1 peer

function installPeer() {
  const driver = join(
    BENCH,
    'node_modules',
    'better-sqlite3',
    'build',
    'Release',
    'better_sqlite3.node',
  )
  if (existsSync(join(BENCH, 'node_modules', 'pixstore3')) && existsSync(driver)) return
  log('Installing pixstore@3.2.1 into bench/node_modules (compiles better-sqlite3, ~3 min)...')
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
  const run = (argv) => spawnSync(npm, argv, { cwd: ROOT, stdio: 'inherit' }).status === 0
  if (!run(['ci', '--prefix', 'bench', '--ignore-scripts=false', '--foreground-scripts']))
    throw new Error('npm ci --prefix bench failed')
  if (!existsSync(driver))
    run(['rebuild', 'better-sqlite3', '--prefix', 'bench', '--ignore-scripts=false'])
  if (!existsSync(driver)) throw new Error('better-sqlite3 did not build in bench/node_modules')
}

// ---------------------------------------------------------------- child processes

function runner(lib, workload, extra, onLine) {
  return new Promise((resolve, reject) => {
    const argv = ['--expose-gc', join(BENCH, 'runner.mjs'), '--lib', lib, '--workload', workload]
    argv.push('--dir', mkdtempSync(join(dir, `${lib}-${workload}-`)), ...extra)
    const child = spawn(process.execPath, argv, { stdio: ['pipe', 'pipe', 'inherit'] })
    let buffered = ''
    const lines = []
    child.stdout.on('data', (chunk) => {
      buffered += chunk
      let end
      while ((end = buffered.indexOf('\n')) >= 0) {
        const text = buffered.slice(0, end)
        buffered = buffered.slice(end + 1)
        // 3.x logs its endpoint's start on stdout; only JSON lines are results.
        if (!text.startsWith('{')) continue
        const line = JSON.parse(text)
        lines.push(line)
        onLine?.(line, child)
      }
    })
    child.on('error', reject)
    child.on('exit', (code) =>
      code === 0 ? resolve(lines) : reject(new Error(`${lib} ${workload} exited with ${code}`)),
    )
  })
}

// ---------------------------------------------------------------- ceilings

function nodeAes() {
  const data = randomBytes(1 << 20)
  let bytes = 0
  const start = performance.now()
  while (performance.now() - start < 1000) {
    const cipher = createCipheriv('aes-256-gcm', randomBytes(32), randomBytes(12))
    cipher.update(data)
    cipher.final()
    cipher.getAuthTag()
    bytes += data.length
  }
  return bytes / ((performance.now() - start) / 1000)
}

function opensslAes() {
  const out = spawnSync(
    'openssl',
    ['speed', '-evp', 'aes-256-gcm', '-seconds', '1', '-bytes', '16384'],
    { encoding: 'utf8' },
  )
  if (out.status !== 0) return null
  const line = out.stdout.split('\n').find((l) => /aes-256-gcm/i.test(l) && /k\s*$/.test(l))
  const match = line && /([\d.]+)k\s*$/.exec(line)
  return match ? Number(match[1]) * 1000 : null
}

function crateAes() {
  const out = spawnSync(
    'cargo',
    ['run', '--quiet', '--release', '--example', 'aes_speed', '--', String(1 << 20)],
    { cwd: ROOT, encoding: 'utf8', timeout: 600000 },
  )
  if (out.status !== 0) return null
  return JSON.parse(out.stdout.trim().split('\n').pop()).bytesPerSecond
}

function diskFsync(size, count) {
  const data = randomBytes(size)
  const folder = mkdtempSync(join(dir, 'disk-'))
  const start = performance.now()
  for (let i = 0; i < count; i++) {
    const fd = openSync(join(folder, `f${i}`), 'w')
    writeSync(fd, data)
    fsyncSync(fd)
    closeSync(fd)
  }
  const elapsed = (performance.now() - start) / 1000
  rmSync(folder, { recursive: true, force: true })
  return {
    size,
    files: count,
    filesPerSecond: count / elapsed,
    bytesPerSecond: (count * size) / elapsed,
  }
}

function ceilings() {
  log('Ceilings: AES-256-GCM (node crypto, openssl speed, our crate), write+fsync of the disk')
  const c = {}
  c.aesNodeOpenssl = nodeAes()
  log(`  node crypto aes-256-gcm (OpenSSL)     ${mb(c.aesNodeOpenssl)}/s`)
  c.aesOpensslCli = opensslAes()
  log(
    `  openssl speed -evp aes-256-gcm (16 KB) ${c.aesOpensslCli ? `${mb(c.aesOpensslCli)}/s` : 'n/a'}`,
  )
  log('  building examples/aes_speed.rs (cargo run --release, first time takes minutes)...')
  c.aesCrate = crateAes()
  log(`  our crate (core::crypto::seal, 1 MiB)  ${c.aesCrate ? `${mb(c.aesCrate)}/s` : 'n/a'}`)
  c.disk4k = diskFsync(4096, 200)
  c.disk1m = diskFsync(1 << 20, 30)
  log(`  disk write+fsync 4 KB files            ${c.disk4k.filesPerSecond.toFixed(0)} files/s`)
  log(`  disk write+fsync 1 MB files            ${mb(c.disk1m.bytesPerSecond)}/s`)
  return c
}

// The ceiling of one call: for writes one sequential write+fsync of the file plus encryption by
// one core; for reads the decryption; for deletes one fsync. Lookups have none.
function ceilingFor(workload, bytes, c) {
  const aes = c.aesCrate ?? c.aesNodeOpenssl
  const perFsync = 1 / c.disk4k.filesPerSecond
  const perByte = 1 / c.disk1m.bytesPerSecond
  if (workload === 'save' || workload === 'update') {
    const disk = 1 / (perFsync + Math.max(0, bytes - 4096) * perByte)
    const cpu = aes / bytes
    return disk < cpu ? { rate: disk, by: 'fsync' } : { rate: cpu, by: 'aes' }
  }
  if (workload === 'readImage') return { rate: aes / bytes, by: 'aes' }
  if (workload === 'delete') return { rate: 1 / perFsync, by: 'fsync' }
  return null
}

// ---------------------------------------------------------------- HTTP load

const WRK = spawnSync('wrk', ['--version'], { encoding: 'utf8' }).stdout?.startsWith('wrk')

// 64 connections on one URL for `seconds`: wrk where it is installed (written in C, it leaves the
// bodies alone), else autocannon.
async function load(url, headers, seconds) {
  if (!WRK) {
    const run = await autocannon({ url, headers, connections: 64, duration: seconds })
    return {
      tool: 'autocannon',
      rate: run['2xx'] / (run.duration || seconds),
      non2xx: run.non2xx,
      errors: run.errors,
      latencyP99Ms: run.latency.p99,
    }
  }
  const argv = ['-t1', '-c64', `-d${seconds}s`, '--latency']
  for (const [name, value] of Object.entries(headers)) argv.push('-H', `${name}: ${value}`)
  const out = await new Promise((resolve, reject) => {
    const child = spawn('wrk', [...argv, url], { stdio: ['ignore', 'pipe', 'inherit'] })
    let text = ''
    child.stdout.on('data', (chunk) => (text += chunk))
    child.on('error', reject)
    child.on('exit', (code) =>
      code === 0 ? resolve(text) : reject(new Error(`wrk exited ${code}`)),
    )
  })
  const number = (pattern) => Number(pattern.exec(out)?.[1] ?? 0)
  const p99 = /^\s+99%\s+([\d.]+)(us|ms|s)$/m.exec(out)
  const sockets = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  return {
    tool: 'wrk',
    rate: number(/Requests\/sec:\s+([\d.]+)/),
    non2xx: number(/Non-2xx or 3xx responses: (\d+)/),
    errors: sockets ? sockets.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0,
    latencyP99Ms: p99 ? Number(p99[1]) * { us: 0.001, ms: 1, s: 1000 }[p99[2]] : null,
  }
}

// ---------------------------------------------------------------- formatting

const mb = (bytes) => `${(bytes / 1e6).toFixed(0)} MB`
const fmt = (rate) =>
  rate == null ? 'N/A' : rate >= 100 ? Math.round(rate).toLocaleString('en-US') : rate.toFixed(1)
const ratio = (a, b) => (a != null && b ? a / b : null)
const fx = (r) => (r == null ? 'n/a' : `${r.toFixed(r >= 10 ? 1 : 2)}x`)
const pct = (a, b) => `${Math.round((100 * a) / b)}%`

function table(rows, headers) {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)))
  const line = (cells) => `| ${cells.map((c, i) => String(c).padEnd(widths[i])).join(' | ')} |`
  return [
    line(headers),
    `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`,
    ...rows.map(line),
  ].join('\n')
}

// ---------------------------------------------------------------- the run

installPeer()
const started = performance.now()
results.ceilings = ceilings()

results.cells = []
for (const lib of ['ours', 'v3']) {
  log(`\nCalls, ${lib === 'ours' ? 'this package' : 'pixstore 3.2.1'} (${args.seconds} s a cell)`)
  await runner(
    lib,
    'ops',
    [
      '--images',
      IMAGES.join(','),
      '--concurrency',
      CONCURRENCY.join(','),
      '--seconds',
      args.seconds,
    ],
    (line) => {
      if (line.type !== 'cell') return
      results.cells.push({ lib, ...line })
      log(
        `  ${lib.padEnd(4)} ${line.workload.padEnd(15)} c${String(line.concurrency).padEnd(4)} ` +
          `${LABEL[line.image].padEnd(12)} ${fmt(line.rate).padStart(9)} ops/s`,
      )
    },
  )
}

log('\nStorm: 200 concurrent saves of the 1.3 MB JPEG')
results.storm = {}
for (const lib of ['ours', 'v3']) {
  const lines = await runner(lib, 'storm', ['--images', 'antalya.jpg', '--count', '200'])
  results.storm[lib] = lines.find((l) => l.type === 'storm')
  const s = results.storm[lib]
  log(
    `  ${lib.padEnd(4)} peak RSS ${mb(s.vmHwm)}, event-loop p99 ${s.loopDelayP99Ms.toFixed(1)} ms`,
  )
}

log(
  `\nDefault endpoint: ${WRK ? 'wrk' : 'autocannon'}, 64 connections, ${args['endpoint-seconds']} s a cell`,
)
if (!WRK) {
  log(
    '  wrk is not installed: autocannon decodes every response body as UTF-8 text, so rows of\n' +
      '  large images measure the client, not the servers (apt-get install wrk)',
  )
}
results.endpointTool = WRK ? 'wrk' : 'autocannon'
results.endpoint = []
for (const lib of ['ours', 'v3']) {
  const port = 40000 + Math.floor(Math.random() * 20000)
  await runner(
    lib,
    'serve',
    ['--images', IMAGES.join(','), '--port', String(port)],
    async (line, child) => {
      if (line.type !== 'ready') return
      try {
        for (const name of IMAGES) {
          const record = line.records[name]
          for (const [path, token, state] of [
            ['Success', String(record.token), 0],
            ['Updated', '0', 1],
          ]) {
            const url = `http://127.0.0.1:${port}/pixstore-image/${encodeURIComponent(record.id)}`
            const headers = { 'x-pixstore-proof': record.statelessProof, 'x-pixstore-token': token }
            const check = new Uint8Array(await (await fetch(url, { headers })).arrayBuffer())
            if (check[0] !== state) throw new Error(`${lib} ${path} answered state ${check[0]}`)
            const run = await load(url, headers, Number(args['endpoint-seconds']))
            const cell = { lib, path, image: name, bytes: check.length, ...run }
            results.endpoint.push(cell)
            log(
              `  ${lib.padEnd(4)} ${path.padEnd(8)} ${LABEL[name].padEnd(12)} ${fmt(cell.rate).padStart(9)} req/s`,
            )
          }
        }
      } finally {
        child.stdin.end()
      }
    },
  )
}

log(`\nStored images: save and getImageRecord rates at concurrency 64 (95 B PNG)`)
results.stored = {}
for (const lib of ['ours', 'v3']) {
  await runner(lib, 'stored', ['--levels', LEVELS.join(','), '--seconds', '1'], (line) => {
    if (line.type !== 'stored') return
    ;(results.stored[lib] ??= []).push(line)
    log(
      `  ${lib.padEnd(4)} ${String(line.level).padStart(7)} stored (filled in ${line.fillSeconds.toFixed(1)} s): ` +
        `save ${fmt(line.save.rate)}/s, getImageRecord ${fmt(line.read.rate)}/s` +
        (line.readImage ? `, readImage ${fmt(line.readImage.rate)}/s` : ''),
    )
  })
}
results.seconds = Math.round((performance.now() - started) / 1000)

// ---------------------------------------------------------------- the report

const c = results.ceilings
const find = (lib, workload, concurrency, image) =>
  results.cells.find(
    (x) =>
      x.lib === lib &&
      x.workload === workload &&
      x.concurrency === concurrency &&
      x.image === image,
  )
const rows = []
for (const workload of WORKLOADS)
  for (const image of IMAGES)
    for (const concurrency of CONCURRENCY) {
      const ours = find('ours', workload, concurrency, image)
      const v3 = find('v3', workload, concurrency, image)
      const ceiling = ceilingFor(workload, ours?.bytes ?? 0, c)
      rows.push([
        workload,
        concurrency,
        LABEL[image],
        fmt(ours?.rate),
        fmt(v3?.rate),
        fx(ratio(ours?.rate, v3?.rate)),
        ceiling ? `${fmt(ceiling.rate)} ${ceiling.by}, ours ${pct(ours.rate, ceiling.rate)}` : '-',
      ])
    }
for (const e of results.endpoint.filter((x) => x.lib === 'ours')) {
  const v3 = results.endpoint.find(
    (x) => x.lib === 'v3' && x.path === e.path && x.image === e.image,
  )
  rows.push([
    `endpoint ${e.path}`,
    64,
    LABEL[e.image],
    fmt(e.rate),
    fmt(v3?.rate),
    fx(ratio(e.rate, v3?.rate)),
    '-',
  ])
}
results.table = rows
const headers = [
  'workload',
  'c',
  'image',
  'ours ops/s',
  '3.2.1 ops/s',
  'ratio',
  'ceiling ops/s, share',
]
log(`\n${table(rows, headers)}`)

const so = results.storm.ours
const s3 = results.storm.v3
log('\nExtra measures')
log(
  table(
    [
      ['peak RSS (VmHWM), 200 x 1.3 MB saves', mb(so.vmHwm), mb(s3.vmHwm), fx(so.vmHwm / s3.vmHwm)],
      ['  RSS before the storm', mb(so.rssBaseline), mb(s3.rssBaseline), '-'],
      [
        'event-loop delay p99 during it',
        `${so.loopDelayP99Ms.toFixed(1)} ms`,
        `${s3.loopDelayP99Ms.toFixed(1)} ms`,
        '-',
      ],
      [
        'event-loop delay max during it',
        `${so.loopDelayMaxMs.toFixed(1)} ms`,
        `${s3.loopDelayMaxMs.toFixed(1)} ms`,
        '-',
      ],
      [
        'storm duration',
        `${so.seconds.toFixed(2)} s`,
        `${s3.seconds.toFixed(2)} s`,
        fx(s3.seconds / so.seconds),
      ],
      ...LEVELS.flatMap((level) => {
        const o = results.stored.ours.find((x) => x.level === level)
        const v = results.stored.v3.find((x) => x.level === level)
        return [
          [
            `save/s, ${level.toLocaleString('en-US')} stored (c64, 95 B)`,
            fmt(o.save.rate),
            fmt(v.save.rate),
            fx(o.save.rate / v.save.rate),
          ],
          [
            `getImageRecord/s, ${level.toLocaleString('en-US')} stored`,
            fmt(o.read.rate),
            fmt(v.read.rate),
            fx(o.read.rate / v.read.rate),
          ],
          [
            `readImage/s, ${level.toLocaleString('en-US')} stored`,
            fmt(o.readImage?.rate),
            'N/A',
            '-',
          ],
        ]
      }),
    ],
    ['measure', 'ours', '3.2.1', 'ratio'],
  ),
)
log('\nCeilings (this machine)')
log(`  AES-256-GCM, our crate (1 thread)     ${c.aesCrate ? `${mb(c.aesCrate)}/s` : 'n/a'}`)
log(`  AES-256-GCM, OpenSSL via node crypto  ${mb(c.aesNodeOpenssl)}/s`)
log(
  `  AES-256-GCM, openssl speed (16 KB)    ${c.aesOpensslCli ? `${mb(c.aesOpensslCli)}/s` : 'n/a'}`,
)
log(`  disk write+fsync, 4 KB files          ${fmt(c.disk4k.filesPerSecond)} files/s`)
log(`  disk write+fsync, 1 MB files          ${mb(c.disk1m.bytesPerSecond)}/s`)

const r = (workload, image) =>
  ratio(find('ours', workload, 64, image)?.rate, find('v3', workload, 64, image)?.rate)
const endpointRatios = results.endpoint
  .filter((x) => x.lib === 'ours')
  .map((e) =>
    ratio(
      e.rate,
      results.endpoint.find((x) => x.lib === 'v3' && x.path === e.path && x.image === e.image)
        ?.rate,
    ),
  )
const first = results.stored.ours[0]
const last = results.stored.ours[results.stored.ours.length - 1]
const targets = [
  ['95-byte saves at c64 >= 10x', r('save', '1-pixel.png'), (x) => x >= 10, fx],
  ['1.3 MB saves at c64 >= 3x', r('save', 'antalya.jpg'), (x) => x >= 3, fx],
  ['95-byte updates at c64 >= 5x', r('update', '1-pixel.png'), (x) => x >= 5, fx],
  ['95-byte deletes at c64 >= 5x', r('delete', '1-pixel.png'), (x) => x >= 5, fx],
  [
    'default endpoint req/s at 64 connections >= 5x (every row)',
    Math.min(...endpointRatios),
    (x) => x >= 5,
    (x) => `min ${fx(x)}`,
  ],
  ['peak RSS of 200 concurrent 1.3 MB saves <= half', so.vmHwm / s3.vmHwm, (x) => x <= 0.5, fx],
  [
    'event-loop p99 during that storm <= 5 ms',
    so.loopDelayP99Ms,
    (x) => x <= 5,
    (x) => `${x.toFixed(1)} ms`,
  ],
  [
    `save rate at ${last.level.toLocaleString('en-US')} stored within 20% of 1,000`,
    last.save.rate / first.save.rate,
    (x) => x >= 0.8,
    (x) => `${Math.round(x * 100)}%`,
  ],
]
results.targets = targets.map(([name, value, test, show]) => ({
  name,
  value,
  met: test(value),
  shown: show(value),
}))
log('\nTargets (ours over 3.2.1)')
for (const t of results.targets) log(`  ${t.met ? 'met    ' : 'NOT met'}  ${t.name}: ${t.shown}`)
if (!LEVELS.includes(100000))
  log('  (the 100,000-stored level was not run: npm run bench -- --full)')

const out = join(BENCH, 'results')
mkdirSync(out, { recursive: true })
const file = join(out, `bench-${results.date.slice(0, 10)}.json`)
writeFileSync(file, `${JSON.stringify(results, null, 2)}\n`)
rmSync(dir, { recursive: true, force: true })
log(`\nDone in ${results.seconds} s. Results written to ${file}`)

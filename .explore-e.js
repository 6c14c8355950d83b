const b = require('pixstore/backend')
const fs = require('fs'), net = require('net')
;(async () => {
  const dir = fs.mkdtempSync('/tmp/explore/s-')
  const port = 3972
  b.initPixstoreBackend({ imageRootDir: dir + '/i', databasePath: dir + '/db', errorHandlingMode: 'throw', defaultEndpointListenHost: '127.0.0.1', defaultEndpointListenPort: port })
  const r = await b.saveImage(fs.readFileSync('assets/antalya.jpg'))
  const s = net.connect(port, '127.0.0.1')
  s.pause()
  let req = ''
  for (let i = 0; i < 20; i++) req += `GET /pixstore-image/${r.id} HTTP/1.1\r\nHost: x\r\nx-pixstore-proof: ${r.statelessProof}\r\n\r\n`
  s.write(req)
  await new Promise(r => setTimeout(r, 1500))
  const t0 = Date.now()
  const mode = process.argv[2]
  const p = mode === 'close' ? b.closePixstoreBackend() : b.stopDefaultEndpoint()
  const res = await Promise.race([p.then(() => 'done'), new Promise(r => setTimeout(r, 40000, 'timeout'))])
  console.log(mode, res, Date.now() - t0)
  // does a new connection get refused meanwhile?
  await new Promise((res) => { const c = net.connect(port, '127.0.0.1'); c.on('connect', () => { console.log('connect accepted'); c.destroy(); res() }); c.on('error', e => { console.log(e.code); res() }) })
  s.destroy()
  const t1 = Date.now()
  await p
  console.log('resolved after client destroyed', Date.now() - t1)
  process.exit(0)
})()

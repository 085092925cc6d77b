// Make a Sigstore bundle with sigstore-js's own builder (@sigstore/sign DSSEBundleBuilder)
// and a key-based signer (a fresh Node key, ECDSA P-256 or Ed25519), no witnesses.
//
//   node sign.js PAYLOAD-FILE PAYLOAD-TYPE HINT ALG OUT-BUNDLE.json OUT-KEY.pem
'use strict';
const fs = require('fs');
const nodeCrypto = require('crypto');
const { DSSEBundleBuilder } = require('@sigstore/sign');
const { bundleToJSON } = require('@sigstore/bundle');

async function main() {
  const [payloadPath, payloadType, hint, alg, outBundle, outKey] = process.argv.slice(2);
  const { privateKey, publicKey } =
    alg === 'ed25519'
      ? nodeCrypto.generateKeyPairSync('ed25519')
      : nodeCrypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const pem = publicKey.export({ type: 'spki', format: 'pem' });
  const signer = {
    sign: async (data) => ({
      signature: nodeCrypto.sign(alg === 'ed25519' ? null : 'sha256', data, privateKey),
      key: { $case: 'publicKey', publicKey: pem, hint },
    }),
  };
  const builder = new DSSEBundleBuilder({ signer, witnesses: [] });
  const bundle = await builder.create({ data: fs.readFileSync(payloadPath), type: payloadType });
  fs.writeFileSync(outBundle, JSON.stringify(bundleToJSON(bundle), null, 2));
  fs.writeFileSync(outKey, pem);
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});

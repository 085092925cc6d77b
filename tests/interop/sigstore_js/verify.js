// Verify a Sigstore bundle with sigstore-js (@sigstore/verify), trusting exactly one public
// key (under its hint) and one RFC 3161 TSA chain. Prints {"ok": true} or {"ok": false,
// "code", "message"}; exit status 0 either way unless the script itself fails.
//
//   node verify.js BUNDLE.json KEY.pem HINT TSA-LEAF.pem TSA-INTERMEDIATE.pem TSA-ROOT.pem
'use strict';
const fs = require('fs');
const { bundleFromJSON } = require('@sigstore/bundle');
const { PublicKey, TrustedRoot } = require('@sigstore/protobuf-specs');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

const [bundlePath, keyPath, hint, ...tsaChain] = process.argv.slice(2);
const der = (pem) =>
  Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64').toString('base64');

const root = TrustedRoot.fromJSON({
  mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
  tlogs: [],
  certificateAuthorities: [],
  ctlogs: [],
  timestampAuthorities: tsaChain.length
    ? [
        {
          subject: { organization: 'stellakeys test', commonName: 'StellaKeys Test TSA' },
          uri: 'https://tsa.invalid',
          certChain: {
            certificates: tsaChain.map((p) => ({ rawBytes: der(fs.readFileSync(p, 'utf8')) })),
          },
          validFor: { start: '2000-01-01T00:00:00Z' },
        },
      ]
    : [],
});
const keys = {
  [hint]: PublicKey.fromJSON({
    rawBytes: der(fs.readFileSync(keyPath, 'utf8')),
    keyDetails: process.env.KEY_DETAILS || 'PKIX_ED25519',
    validFor: { start: '2000-01-01T00:00:00Z' },
  }),
};
try {
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
  const verifier = new Verifier(toTrustMaterial(root, keys), {
    tlogThreshold: 0,
    ctlogThreshold: 0,
    timestampThreshold: tsaChain.length ? 1 : 0,
  });
  verifier.verify(toSignedEntity(bundle));
  console.log(JSON.stringify({ ok: true }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, code: e.code || e.name, message: e.message }));
}

import { amqpUrls, connectOptions, loadConfig } from '@taskbox/shared';

describe('AMQP_URLS', () => {
  it('lists the cluster nodes in the order given', () => {
    const config = loadConfig({ AMQP_URLS: 'amqp://u:p@rabbit-0:5672, amqp://u:p@rabbit-1:5672,amqps://u:p@rabbit-2' });
    expect(amqpUrls(config)).toEqual(['amqp://u:p@rabbit-0:5672', 'amqp://u:p@rabbit-1:5672', 'amqps://u:p@rabbit-2']);
  });

  it('falls back to AMQP_URL as the only node', () => {
    expect(amqpUrls(loadConfig({ AMQP_URL: 'amqp://u:p@broker:5672' }))).toEqual(['amqp://u:p@broker:5672']);
    expect(amqpUrls(loadConfig({}))).toEqual(['amqp://guest:guest@127.0.0.1:5672']);
  });

  it('names AMQP_URLS when an entry is not an amqp URL, or the list is empty', () => {
    expect(() => loadConfig({ AMQP_URLS: 'amqp://a:5672,http://b' })).toThrow(/AMQP_URLS\.1: amqp:\/\//);
    expect(() => loadConfig({ AMQP_URLS: ' , ' })).toThrow(/AMQP_URLS/);
  });
});

describe('connectOptions', () => {
  it('hands amqplib the credentials decoded, so a password with reserved characters works', () => {
    expect(connectOptions('amqps://app%40acme:p%3Ass%2Fw@[::1]:5671/prod%2Fa?heartbeat=30')).toEqual({
      protocol: 'amqps',
      hostname: '::1',
      port: 5671,
      username: 'app@acme',
      password: 'p:ss/w',
      // amqplib unescapes the vhost itself, as it does for a URL.
      vhost: 'prod%2Fa',
      heartbeat: 30,
      frameMax: undefined,
      channelMax: undefined,
      locale: undefined,
    });
  });

  it('leaves credentials unset without them, which amqplib reads as guest/guest like a bare URL', () => {
    expect(connectOptions('amqp://broker')).toMatchObject({
      username: undefined,
      password: undefined,
      port: undefined,
    });
  });

  it('asks for a 10 s heartbeat unless the URL names one, so a silent node is noticed in about 20 s', () => {
    expect(connectOptions('amqp://broker').heartbeat).toBe(10);
    expect(connectOptions('amqp://broker?heartbeat=0').heartbeat).toBe(0);
  });
});

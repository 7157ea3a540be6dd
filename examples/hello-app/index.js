import ms from 'ms';
import kleur from 'kleur';

/** Says how long ago something happened, in colour. */
export function ago(milliseconds) {
  return `${kleur.green(ms(milliseconds, { long: true }))} ago`;
}

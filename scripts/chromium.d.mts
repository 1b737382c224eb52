export interface PackagedChromium {
  readonly executablePath: string
  readonly env: Record<string, string>
  readonly version: string
}
export function packagedChromium(): Promise<PackagedChromium | { readonly error: string }>

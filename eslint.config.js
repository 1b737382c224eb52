// Lint (npm run lint, part of npm test): the rules the project relies on, not a style guide
// (the formatter, prettier, owns layout). Typed: no-floating-promises needs the type checker.
import tseslint from 'typescript-eslint'

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'src/config/schema-validator.generated.ts'] },
  {
    files: ['**/*.ts', '**/*.mts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { '@typescript-eslint': tseslint.plugin },
    rules: {
      // A promise nobody awaits or hands on must say so (`void`): its failure would go unseen.
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      // Modules say what they export by name: a reader finds where a name comes from by grep.
      'no-restricted-syntax': [
        'error',
        { selector: 'ExportAllDeclaration', message: 'export names explicitly instead of export *' },
      ],
    },
  },
)

// A wasmos task in AssemblyScript: a WASI preview1 command (through
// @assemblyscript/wasi-shim). Prints a greeting with its arguments.

const args = process.argv.slice(1); // argv[0] is the program name
let greeting = "hello from AssemblyScript";
if (args.length > 0) greeting += ", " + args.join(" ");
process.stdout.write(greeting + "!\n");
process.stdout.write("args: " + args.length.toString() + "\n");
